"""COCO detection JSON (boxes + compressed-RLE footprints + per-nodule attributes) writing and reading."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from data.atomic import atomic_write_json, to_jsonable
from data.records import ImageRecord, NoduleLabel, decode_mask, encode_mask

DEFAULT_CATEGORY = "nodule"
SUPERCATEGORY = "lesion"


def _categories(records: list[ImageRecord]) -> list[dict[str, Any]]:
    """Category list: "nodule" is always id 1; other names get ids in order of first appearance."""
    names = [DEFAULT_CATEGORY]
    for rec in records:
        for n in rec.nodules:
            if n.category not in names:
                names.append(n.category)
    return [{"id": i, "name": name, "supercategory": SUPERCATEGORY} for i, name in enumerate(names, start=1)]


def _box_polygon(box: tuple[float, float, float, float]) -> list[list[float]]:
    """Rectangle polygon for box-only labels, so COCO tools (annToMask, showAnns) still work."""
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def build_coco(records: list[ImageRecord], info: dict[str, Any]) -> dict[str, Any]:
    """Build a COCO detection dict; image ids and annotation ids are 1-based in record/nodule order.

    Args:
        records: images in output order.
        info: goes to the top-level "info" (version, description, date_created, ... no patient data).
    """
    categories = _categories(records)
    cat_id = {c["name"]: c["id"] for c in categories}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, rec in enumerate(records, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": rec.file_name,
                "width": rec.width,
                "height": rec.height,
                "attributes": to_jsonable(rec.attributes),
            }
        )
        for n in rec.nodules:
            has_fp = n.footprint is not None
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[n.category],
                    "bbox": list(n.bbox_xywh),
                    "area": n.area,
                    "iscrowd": 0,
                    "segmentation": encode_mask(n.footprint) if has_fp else _box_polygon(n.bbox_xywh),
                    "nodule_id": n.nodule_id,
                    # Lets read_coco tell a real footprint from the stand-in rectangle of a box-only label.
                    "has_footprint": has_fp,
                    "attributes": to_jsonable(n.attributes),
                }
            )
    return {
        "info": to_jsonable(info),
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(path: str | Path, records: list[ImageRecord], info: dict[str, Any]) -> Path:
    """Atomically write :func:`build_coco` output as deterministic JSON."""
    return atomic_write_json(path, build_coco(records, info))


def _segmentation_mask(seg: Any, height: int, width: int) -> np.ndarray | None:
    """Rasterize a COCO segmentation (RLE or polygons) to a HxW bool mask; None if absent."""
    if isinstance(seg, dict):
        return decode_mask(seg)
    if isinstance(seg, list) and seg:
        rles = mask_utils.frPyObjects(seg, height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    return None


def read_coco(path: str | Path) -> list[ImageRecord]:
    """Read a COCO detection JSON back into records (images in id order, nodules in annotation id order)."""
    with open(path, encoding="utf-8") as fh:
        coco = json.load(fh)
    cat_name = {c["id"]: c["name"] for c in coco.get("categories", [])}
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in sorted(coco.get("annotations", []), key=lambda a: a["id"]):
        by_image[ann["image_id"]].append(ann)
    records = []
    for img in sorted(coco["images"], key=lambda i: i["id"]):
        h, w = int(img["height"]), int(img["width"])
        nodules = []
        for k, ann in enumerate(by_image.get(img["id"], []), start=1):
            footprint = None
            if ann.get("has_footprint", True):
                footprint = _segmentation_mask(ann.get("segmentation"), h, w)
            nodules.append(
                NoduleLabel(
                    nodule_id=int(ann.get("nodule_id", k)),
                    bbox_xywh=tuple(ann["bbox"]),  # type: ignore[arg-type]
                    footprint=footprint,
                    category=cat_name.get(ann["category_id"], str(ann["category_id"])),
                    attributes=dict(ann.get("attributes", {})),
                )
            )
        records.append(
            ImageRecord(
                file_name=img["file_name"], width=w, height=h, nodules=nodules, attributes=dict(img.get("attributes", {}))
            )
        )
    return records
