"""YOLO (Ultralytics) detection labels: one normalized ``class cx cy w h`` line per box, plus data.yaml."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from data.atomic import atomic_write_text
from data.records import ImageRecord

FAINT_LABELS: tuple[str, ...] = ("drop", "keep")


def label_relpath(file_name: str) -> str:
    """Label file for an image, relative to the root: ``images/a/x.png`` -> ``labels/a/x.txt`` (Ultralytics rule)."""
    rel = PurePosixPath(file_name)
    parts = rel.parts[1:] if rel.parts[0] == "images" else rel.parts
    return str(PurePosixPath("labels", *parts).with_suffix(".txt"))


def _yaml_str(value: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML), so no PyYAML is needed."""
    return json.dumps(value, ensure_ascii=False)


def check_faint_labels(value: str) -> str:
    """``value`` if it is a known faint-label policy, else a one-line ValueError listing them."""
    if value not in FAINT_LABELS:
        raise ValueError(f"--faint-labels: unknown value {value!r}: expected one of {', '.join(FAINT_LABELS)}")
    return value


def yolo_lines(record: ImageRecord, class_names: Sequence[str] = ("nodule",), faint_labels: str = "keep") -> list[str]:
    """Label lines for one image; boxes are clipped to the image and dropped if nothing is left.

    ``faint_labels="drop"`` leaves out nodules whose ``faint`` attribute is true (too subtle to see, see
    ct_projection/labels.py): a detector is then not taught to fire on invisible targets.
    """
    check_faint_labels(faint_labels)
    lines = []
    for n in record.nodules:
        if faint_labels == "drop" and n.attributes.get("faint"):
            continue
        if n.category not in class_names:
            raise ValueError(f"{record.file_name}: category {n.category!r} not in class_names {tuple(class_names)}")
        x, y, w, h = n.bbox_xywh
        x0, y0 = min(max(x, 0.0), record.width), min(max(y, 0.0), record.height)
        x1, y1 = min(max(x + w, 0.0), record.width), min(max(y + h, 0.0), record.height)
        if x1 <= x0 or y1 <= y0:
            continue
        cx, cy = (x0 + x1) / 2 / record.width, (y0 + y1) / 2 / record.height
        nw, nh = (x1 - x0) / record.width, (y1 - y0) / record.height
        lines.append(f"{list(class_names).index(n.category)} {cx:.6f} {cy:.6f} {nw:.6f} {nh:.6f}")
    return lines


def write_yolo_labels(
    root: str | Path, records: Sequence[ImageRecord], class_names: Sequence[str] = ("nodule",), faint_labels: str = "keep"
) -> None:
    """Write ``labels/*.txt`` under ``root`` for every record (empty for images without a box)."""
    for rec in records:
        lines = yolo_lines(rec, class_names, faint_labels)
        atomic_write_text(Path(root) / label_relpath(rec.file_name), "".join(f"{line}\n" for line in lines))


def write_yolo(
    root: str | Path,
    records: Sequence[ImageRecord],
    class_names: Sequence[str] = ("nodule",),
    splits: Mapping[str, Sequence[str]] | None = None,
    faint_labels: str = "keep",
    comments: Sequence[str] = (),
    yaml_path: str | Path | None = None,
) -> Path:
    """Write ``labels/*.txt`` for every record (empty for nodule-free images) and ``data.yaml`` under ``root``.

    Args:
        root: dataset root; record file names are relative to it.
        records: images to label.
        class_names: class index order.
        splits: optional ``{"train": [file_name, ...], "val": [...], ...}``; each becomes ``<split>.txt``
            listing ``./<file_name>``. Without it, train and val both point at the ``images`` folder.
        faint_labels: ``keep`` or ``drop`` nodules flagged faint (see :func:`yolo_lines`); said in data.yaml.
        comments: extra ``#`` lines for data.yaml (how the dataset was made).
        yaml_path: where data.yaml goes (default ``root/data.yaml``); list paths are written relative to it.

    Returns:
        Path of data.yaml.
    """
    root = Path(root)
    write_yolo_labels(root, records, class_names, faint_labels)

    yaml_file = Path(yaml_path) if yaml_path is not None else root / "data.yaml"
    prefix = os.path.relpath(root, yaml_file.parent).replace(os.sep, "/")
    prefix = "" if prefix == "." else prefix + "/"
    entries: dict[str, str] = {}
    if splits:
        for split, names in splits.items():
            # "./" entries are resolved by Ultralytics relative to the list file's folder.
            atomic_write_text(root / f"{split}.txt", "".join(f"./{name}\n" for name in names))
            entries[split] = f"{prefix}{split}.txt"
        entries.setdefault("val", entries.get("train", f"{prefix}images"))
    else:
        entries = {"train": f"{prefix}images", "val": f"{prefix}images"}

    # No `path:` key: Ultralytics then resolves train/val relative to data.yaml's folder, so the dataset can move
    # and two runs with the same seed stay byte-identical wherever they were written.
    yaml_lines = ["# Ultralytics YOLO dataset (paths relative to this file)"]
    yaml_lines.append(
        f"# faint_labels: {faint_labels} ("
        + ("nodules flagged faint have no box" if faint_labels == "drop" else "every nodule has a box, faint or not")
        + ")"
    )
    yaml_lines += [f"# {line}" for line in comments]
    yaml_lines += [f"{split}: {_yaml_str(target)}" for split, target in entries.items()]
    yaml_lines.append(f"nc: {len(class_names)}")
    yaml_lines.append("names:")
    yaml_lines += [f"  {i}: {_yaml_str(name)}" for i, name in enumerate(class_names)]
    return atomic_write_text(yaml_file, "\n".join(yaml_lines) + "\n")


def read_yolo_labels(path: str | Path, width: int, height: int) -> list[tuple[int, tuple[float, float, float, float]]]:
    """Read a YOLO label file back to ``[(class_id, (x, y, w, h) in pixels), ...]``; empty file -> []."""
    boxes = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5:
                raise ValueError(f"{path}:{lineno}: expected 'class cx cy w h', got {line.strip()!r}")
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
            boxes.append((cls, ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)))
    return boxes
