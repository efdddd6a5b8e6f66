"""Format-neutral label records (one per synthetic image) that the pipeline fills in and every writer reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from data.atomic import to_jsonable

BBox = tuple[float, float, float, float]


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Encode a HxW boolean mask as compressed COCO RLE ``{"size": [h, w], "counts": str}``."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    # pycocotools wants a Fortran-ordered uint8 array; counts come back as bytes.
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode COCO RLE (compressed string/bytes or uncompressed count list) to a HxW bool mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (e.g. iscrowd annotations from other tools)
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def bbox_from_mask(mask: np.ndarray) -> BBox:
    """Tight pixel-edge box (x, y, w, h) of a mask: columns 10..19 give x=10, w=10; (0, 0, 0, 0) if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))


@dataclass(eq=False)
class NoduleLabel:
    """One inserted nodule in one image.

    Attributes:
        nodule_id: id of the nodule, unique within its image (stable across views of the same insertion).
        bbox_xywh: pixel box (x, y = top-left edge, w, h), pixel-edge convention (see :func:`bbox_from_mask`).
        footprint: HxW bool mask of the projected nodule over the full image, or None when only a box is known.
        category: class name (COCO category / YOLO class).
        attributes: nodule facts (type, shape, diameter_mm, mean_hu, volume_mm3, lobe, conspicuity, faint, ...).
    """

    nodule_id: int
    bbox_xywh: BBox
    footprint: np.ndarray | None = None
    category: str = "nodule"
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.bbox_xywh)
        if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
            raise ValueError(f"nodule {self.nodule_id}: bbox_xywh must be 4 finite numbers with w, h >= 0, got {box}")
        self.bbox_xywh = box  # type: ignore[assignment]
        self.nodule_id = int(self.nodule_id)
        if self.footprint is not None:
            fp = np.asarray(self.footprint)
            if fp.ndim != 2:
                raise ValueError(f"nodule {self.nodule_id}: footprint must be 2-D, got shape {fp.shape}")
            self.footprint = fp.astype(bool, copy=False)

    @property
    def area(self) -> float:
        """Footprint pixel count, or the box area when there is no footprint."""
        if self.footprint is not None:
            return float(np.count_nonzero(self.footprint))
        return self.bbox_xywh[2] * self.bbox_xywh[3]

    def __eq__(self, other: object) -> bool:
        # Hand-written because ndarray == ndarray is elementwise.
        if not isinstance(other, NoduleLabel):
            return NotImplemented
        same_fp = (self.footprint is None and other.footprint is None) or (
            self.footprint is not None and other.footprint is not None and np.array_equal(self.footprint, other.footprint)
        )
        return (
            same_fp
            and self.nodule_id == other.nodule_id
            and self.bbox_xywh == other.bbox_xywh
            and self.category == other.category
            and to_jsonable(self.attributes) == to_jsonable(other.attributes)
        )

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON dict; the footprint is stored as compressed COCO RLE (or null)."""
        return {
            "nodule_id": self.nodule_id,
            "bbox_xywh": list(self.bbox_xywh),
            "footprint": None if self.footprint is None else encode_mask(self.footprint),
            "category": self.category,
            "attributes": to_jsonable(self.attributes),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> NoduleLabel:
        """Inverse of :meth:`to_json`."""
        fp = obj.get("footprint")
        return cls(
            nodule_id=int(obj["nodule_id"]),
            bbox_xywh=tuple(obj["bbox_xywh"]),  # type: ignore[arg-type]
            footprint=None if fp is None else decode_mask(fp),
            category=str(obj.get("category", "nodule")),
            attributes=dict(obj.get("attributes", {})),
        )


@dataclass(eq=False)
class ImageRecord:
    """One synthetic image and its labels.

    Attributes:
        file_name: POSIX path relative to the dataset root, e.g. ``"images/ct-3f2a_0001.png"``.
        width, height: image size in pixels.
        nodules: labels of nodules visible in this image (empty for a nodule-free image).
        attributes: image facts (ct checksum/alias, pose, view, seed, pixel_spacing_mm, pair file name, ...).
    """

    file_name: str
    width: int
    height: int
    nodules: list[NoduleLabel] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rel = PurePosixPath(self.file_name)
        if rel.is_absolute() or ".." in rel.parts or not rel.name or "\\" in self.file_name:
            raise ValueError(f"file_name must be a relative POSIX path inside the dataset, got {self.file_name!r}")
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"{self.file_name}: width/height must be positive, got {self.width}x{self.height}")
        ids = [n.nodule_id for n in self.nodules]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.file_name}: duplicate nodule_id in {ids}")
        for n in self.nodules:
            if n.footprint is not None and n.footprint.shape != (self.height, self.width):
                raise ValueError(
                    f"{self.file_name}: nodule {n.nodule_id} footprint shape {n.footprint.shape} "
                    f"!= image (height, width) {(self.height, self.width)}"
                )

    @property
    def stem(self) -> str:
        """File name without folder and extension (used for per-image label files)."""
        return PurePosixPath(self.file_name).stem

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageRecord):
            return NotImplemented
        return (
            self.file_name == other.file_name
            and (self.width, self.height) == (other.width, other.height)
            and self.nodules == other.nodules
            and to_jsonable(self.attributes) == to_jsonable(other.attributes)
        )

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON dict for the manifest (see :class:`data.manifest.Manifest`)."""
        return {
            "file_name": self.file_name,
            "width": self.width,
            "height": self.height,
            "nodules": [n.to_json() for n in self.nodules],
            "attributes": to_jsonable(self.attributes),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ImageRecord:
        """Inverse of :meth:`to_json`."""
        return cls(
            file_name=str(obj["file_name"]),
            width=int(obj["width"]),
            height=int(obj["height"]),
            nodules=[NoduleLabel.from_json(n) for n in obj.get("nodules", [])],
            attributes=dict(obj.get("attributes", {})),
        )
