"""Join generated datasets into one: files copied, label files rebuilt with fresh COCO ids and one split.

Each input is a dataset folder written by ``diffusionxray generate`` (or an earlier merge): its
``annotations/coco.json`` lists the images, ``manifest.jsonl`` (when present) every file of each image. File names
carry each run's tag, so datasets of different runs never share a name; a shared name (the same run given twice,
or two runs forced to one ``--run-tag``) is refused, as is an output folder that is not new or empty or that lies
inside an input. Nothing is written outside the output folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from data.atomic import atomic_write_bytes, atomic_write_json
from data.coco import read_coco
from data.dataset_files import write_label_files
from data.records import ImageRecord

# Image attributes that name further files of the same sample (root-relative).
FILE_ATTRIBUTES = ("nodule_free_file", "drr_file", "drr_nodule_free_file", "detector_file", "detector_nodule_free_file")
SETTINGS = ("faint_labels", "negatives", "val_fraction")
DEFAULTS: dict[str, Any] = {"faint_labels": "drop", "negatives": False, "val_fraction": 0.2}


class MergeError(ValueError):
    """A merge that cannot be done; str is one line naming the folder or file."""


@dataclass
class MergeResult:
    """What a merge wrote."""

    out_dir: Path
    records: list[ImageRecord] = field(default_factory=list)
    files: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def _safe_relative(name: str, where: Path) -> PurePosixPath:
    """A dataset-relative POSIX path, or MergeError (absolute paths and '..' could reach outside the output)."""
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise MergeError(f"{where}: refuses file name {name!r} (not a relative path inside the dataset)")
    return rel


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _sample_files(root: Path, records: list[ImageRecord]) -> dict[str, list[str]]:
    """Every file of every image (by image file name): its manifest entry's files, else its file attributes."""
    files = {r.file_name: [r.file_name] + [str(r.attributes[k]) for k in FILE_ATTRIBUTES if r.attributes.get(k)]
             for r in records}  # fmt: skip
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                name, listed = entry["record"]["file_name"], list(entry["files"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn line: its sample is not in coco.json either
            if name in files:
                files[name] = sorted(set(files[name]) | set(listed))
    return files


def _settings(root: Path) -> dict[str, Any]:
    """The label settings a dataset was written with (dataset.json config, or a merge's merged.json)."""
    for name, key in (("dataset.json", "config"), ("merged.json", "settings")):
        path = root / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8")).get(key, {})
            except ValueError as err:
                raise MergeError(f"{path}: unreadable ({err})") from None
            return {k: data.get(k, DEFAULTS[k]) for k in SETTINGS}
    return dict(DEFAULTS)


def _provenance(root: Path) -> dict[str, Any]:
    """An input's sources and settings fingerprint (from dataset.json / merged.json), without input paths."""
    for name in ("dataset.json", "merged.json"):
        path = root / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return {k: data[k] for k in ("config_fingerprint", "sources", "inputs") if k in data}
    return {}


def merge_datasets(
    inputs: Sequence[str | Path], out_dir: str | Path, **overrides: Any
) -> MergeResult:
    """Copy every image file of ``inputs`` into ``out_dir`` and write one set of label files over all of them.

    Args:
        inputs: dataset folders (at least two).
        out_dir: new (or empty) folder, not inside any input.
        overrides: ``faint_labels``, ``negatives``, ``val_fraction``; each defaults to the inputs' common value
            (inputs that disagree must be given one).
    """
    roots = [Path(p) for p in inputs]
    out = Path(out_dir)
    if len(roots) < 2:
        raise MergeError("merge needs at least two datasets")
    for root in roots:
        if not (root / "annotations" / "coco.json").is_file():
            raise MergeError(f"{root}: no annotations/coco.json (not a generated dataset)")
        if _inside(out, root) or _inside(root, out):
            raise MergeError(f"{out}: the output folder must lie outside every input (it overlaps {root})")
    if len({r.resolve() for r in roots}) != len(roots):
        raise MergeError("the same dataset is given twice")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeError(f"{out}: exists and is not an empty folder; merge writes only into a new one")
    settings = {}
    found = [_settings(r) for r in roots]
    for key in SETTINGS:
        if overrides.get(key) is not None:
            settings[key] = overrides[key]
            continue
        values = {json.dumps(f[key]) for f in found}
        if len(values) > 1:
            raise MergeError(f"the inputs differ in {key} ({', '.join(sorted(values))}): choose one with --{key.replace('_', '-')}")
        settings[key] = found[0][key]

    records: list[ImageRecord] = []
    owner: dict[str, Path] = {}
    copies: list[tuple[Path, PurePosixPath]] = []
    for root in roots:
        recs = read_coco(root / "annotations" / "coco.json")
        per_image = _sample_files(root, recs)
        for rec in recs:
            for name in per_image[rec.file_name]:
                rel = _safe_relative(name, root)
                if str(rel) in owner:
                    raise MergeError(
                        f"{root} and {owner[str(rel)]} both hold {rel}: the same run twice, or two runs with one "
                        "--run-tag (regenerate one with another --run-tag)"
                    )
                src = root / rel
                if not src.is_file() or src.is_symlink() or not _inside(src, root):
                    raise MergeError(f"{src}: missing, or not a regular file inside its dataset")
                owner[str(rel)] = root
                copies.append((src, rel))
        records.extend(recs)

    for src, rel in copies:
        atomic_write_bytes(out / rel, src.read_bytes())
    info = {"description": "DiffusionXRay synthetic CXRs (merged)"}
    splits = write_label_files(out, records, info, **settings)
    atomic_write_json(
        out / "merged.json",
        {"settings": settings, "images": len(records), "inputs": [_provenance(r) for r in roots]},
    )
    return MergeResult(out, records, len(copies), splits, settings)
