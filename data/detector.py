"""Detector-ready view of a dataset: 8-bit windowed images, a real train/val split, YOLO + COCO + CSV per split.

The physical images (``images/``, 16-bit, fixed scale shared by all CTs) stay the dataset's reference. Common
detector loaders read a 16-bit PNG as 8 bits by keeping the high byte (OpenCV's default ``imread``, PIL
``convert("L")``), which leaves a nodule 2–6 grey levels of contrast. So every sample also gets
``detector/images/<name>.png``: 8-bit, windowed per image to its own lung field (the window is recorded in the
image's ``detector_window`` attribute), which every loader reads the same way. Layout::

    data.yaml                         Ultralytics: train/val lists below, faint-label choice in its comments
    detector/images/<name>.png        8-bit windowed image (and <name>_free.png, the nodule-free twin)
    detector/labels/<name>.txt        YOLO boxes
    detector/train.txt, val.txt       image lists of the split
    detector/coco.json, coco_train.json, coco_val.json   COCO, file names relative to detector/
    detector/metadata.csv             NODE21-style csv (+ faint, conspicuity) of every detector image

The split holds CTs out when the dataset has several (no CT in both), otherwise a fraction of the images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from data.atomic import atomic_write_json
from data.coco import build_coco
from data.node21 import write_node21_csv
from data.records import ImageRecord
from data.yolo import check_faint_labels, write_yolo

DETECTOR_DIR = "detector"
WINDOW_PERCENTILES = (0.5, 99.5)
FREE_SUFFIX = "_free"


def lung_window(
    pixels: np.ndarray, field: np.ndarray | None, percentiles: tuple[float, float] = WINDOW_PERCENTILES
) -> tuple[int, int]:
    """Display window (lo, hi) in the image's own units: percentiles of its values over the lung field.

    Falls back to the non-zero (inside-body) pixels when the field is missing or nearly empty.
    """
    values = pixels[field] if field is not None and int(np.count_nonzero(field)) >= 64 else pixels[pixels > 0]
    if values.size == 0:
        values = pixels.ravel()
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    lo_i, hi_i = int(np.floor(lo)), int(np.ceil(hi))
    return lo_i, max(hi_i, lo_i + 1)


def encode_uint8(pixels: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Map ``[lo, hi]`` linearly onto 0…255 (clipped, rounded): bright stays bright."""
    lo, hi = window
    scaled = (np.asarray(pixels, dtype=np.float64) - lo) / float(hi - lo)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def detector_name(stem: str, nodule_free: bool = False) -> str:
    """Root-relative path of a sample's detector image."""
    return f"{DETECTOR_DIR}/images/{stem}{FREE_SUFFIX if nodule_free else ''}.png"


def _order_key(text: str) -> str:
    """A stable pseudo-random order (hash), so the split does not depend on input order."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_keys(records: Sequence[ImageRecord], val_fraction: float) -> tuple[dict[str, str], str]:
    """``{file_name: "train" | "val"}`` and how the split was made (one line).

    Several CTs: ``round(n_ct * val_fraction)`` whole CTs (at least 1, at most n_ct − 1) go to val. One CT: that
    fraction of its images (at least 1 when there are ≥ 2). A single image, or ``val_fraction`` 0, is train only.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    cts = sorted({str(r.attributes.get("ct_sha256", r.attributes.get("ct", ""))) for r in records}, key=_order_key)
    out = {r.file_name: "train" for r in records}
    if val_fraction == 0.0 or len(records) < 2:
        return out, "no validation split (val_fraction 0 or a single image): val lists the training images"
    if len(cts) >= 2:
        k = min(max(1, round(len(cts) * val_fraction)), len(cts) - 1)
        held = set(cts[:k])
        for r in records:
            if str(r.attributes.get("ct_sha256", r.attributes.get("ct", ""))) in held:
                out[r.file_name] = "val"
        return out, f"val holds out {k} of {len(cts)} CTs (no CT in both splits)"
    names = sorted((r.file_name for r in records), key=_order_key)
    k = min(max(1, round(len(names) * val_fraction)), len(names) - 1)
    for name in names[:k]:
        out[name] = "val"
    return out, f"one CT: val holds out {k} of {len(names)} images (same CT as train: optimistic)"


def detector_records(records: Sequence[ImageRecord], negatives: bool) -> list[ImageRecord]:
    """Records of the detector images (file names relative to ``detector/``), nodule-free twins with ``negatives``.

    Records without a detector image (datasets made before it existed) are left out.
    """
    out = []
    for rec in records:
        det = rec.attributes.get("detector_file")
        if not det:
            continue
        attrs = {**rec.attributes, "physical_file": rec.file_name}
        out.append(ImageRecord(_inside(det), rec.width, rec.height, list(rec.nodules), attrs))
        free = rec.attributes.get("detector_nodule_free_file")
        if negatives and free:
            neg = {**attrs, "physical_file": rec.attributes.get("nodule_free_file"), "negative_of": _inside(det)}
            out.append(ImageRecord(_inside(free), rec.width, rec.height, [], neg))
    return out


def _inside(root_relative: str) -> str:
    """``detector/images/x.png`` → ``images/x.png`` (the path relative to the detector folder)."""
    parts = PurePosixPath(root_relative).parts
    if parts[0] != DETECTOR_DIR:
        raise ValueError(f"detector image {root_relative!r} is not under {DETECTOR_DIR}/")
    return str(PurePosixPath(*parts[1:]))


def detector_coco(records: Sequence[ImageRecord], info: dict[str, Any], faint_labels: str) -> dict[str, Any]:
    """COCO dict; with ``drop`` a faint nodule is an ``iscrowd`` (ignore) region: neither target nor false positive."""
    coco = build_coco(list(records), {**info, "faint_labels": faint_labels})
    if faint_labels == "drop":
        for ann in coco["annotations"]:
            if ann["attributes"].get("faint"):
                ann["iscrowd"] = 1
                ann["ignore"] = 1  # mmdetection's spelling of the same thing
    return coco


def write_detector_dataset(
    root: str | Path,
    records: Sequence[ImageRecord],
    *,
    faint_labels: str = "drop",
    negatives: bool = False,
    val_fraction: float = 0.2,
    info: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Write the detector view (see the module docstring) and the root ``data.yaml``; returns image counts per split.

    Args:
        root: dataset root (record file names are relative to it).
        records: the dataset's records, whose ``detector_file`` attributes name their 8-bit images.
        faint_labels: ``drop`` (default) or ``keep`` boxes of nodules flagged faint.
        negatives: also list each sample's nodule-free twin as an image without boxes.
        val_fraction: share of CTs (or of images, with one CT) held out for validation.
        info: COCO ``info`` (provenance; no patient data).
    """
    check_faint_labels(faint_labels)
    root = Path(root)
    det_root = root / DETECTOR_DIR
    where, how = split_keys(records, val_fraction)
    det = detector_records(records, negatives)
    if not det:
        return {}
    split_of: dict[str, str] = {}
    for rec in records:  # a negative goes where its positive twin goes (same pose)
        for key in ("detector_file", "detector_nodule_free_file"):
            if rec.attributes.get(key):
                split_of[_inside(rec.attributes[key])] = where[rec.file_name]
    splits = {s: [r.file_name for r in det if split_of[r.file_name] == s] for s in ("train", "val")}
    if not splits["val"]:
        splits.pop("val")
    comments = [
        f"split: {how}",
        f"negatives: {'nodule-free twins listed as images without boxes' if negatives else 'none'}",
        "images: 8-bit, windowed per image to its lung field (detector_window in the COCO image attributes); "
        "the physical 16-bit images are in images/",
    ]
    write_yolo(det_root, det, splits=splits, faint_labels=faint_labels, comments=comments, yaml_path=root / "data.yaml")
    info = {**(info or {}), "split": how, "negatives": negatives}
    atomic_write_json(det_root / "coco.json", detector_coco(det, info, faint_labels))
    for split, names in splits.items():
        chosen = set(names)
        subset = [r for r in det if r.file_name in chosen]
        atomic_write_json(det_root / f"coco_{split}.json", detector_coco(subset, {**info, "split_name": split}, faint_labels))
    write_node21_csv(det_root / "metadata.csv", det)
    return {s: len(n) for s, n in splits.items()}
