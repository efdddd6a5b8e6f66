"""Dataset formats for DiffusionXRay: label records, atomic writers, PNG I/O, COCO/YOLO/NODE21 labels, manifest.

Light by design (numpy, Pillow, pycocotools only); it never imports the projection, restoration or pipeline code.
"""

from __future__ import annotations

from data.atomic import (
    DatasetWriteError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)
from data.coco import build_coco, read_coco, write_coco
from data.contact_sheet import contact_sheet
from data.images import read_image, read_png16, write_png8, write_png16
from data.manifest import Manifest, write_run_info
from data.node21 import Node21Row, read_node21_csv, write_node21_csv
from data.records import ImageRecord, NoduleLabel, bbox_from_mask, decode_mask, encode_mask
from data.yolo import read_yolo_labels, write_yolo

__all__ = [
    "DatasetWriteError",
    "ImageRecord",
    "Manifest",
    "Node21Row",
    "NoduleLabel",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "bbox_from_mask",
    "build_coco",
    "contact_sheet",
    "decode_mask",
    "encode_mask",
    "read_coco",
    "read_image",
    "read_node21_csv",
    "read_png16",
    "read_yolo_labels",
    "sha256_file",
    "write_coco",
    "write_node21_csv",
    "write_png16",
    "write_png8",
    "write_run_info",
    "write_yolo",
]
