"""Every label file of a dataset, built from its records: COCO, YOLO, NODE21 csv and the detector view.

Shared by ``generate`` (at the end of a run) and ``merge`` (over several runs), so both write the same layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data.coco import write_coco
from data.detector import write_detector_dataset
from data.node21 import write_node21_csv
from data.records import ImageRecord
from data.yolo import write_yolo_labels


def write_label_files(
    root: str | Path,
    records: Sequence[ImageRecord],
    info: dict[str, Any],
    faint_labels: str = "drop",
    negatives: bool = False,
    val_fraction: float = 0.2,
) -> dict[str, int]:
    """Write annotations/coco.json, labels/, metadata.csv, data.yaml and detector/; returns images per split.

    Args:
        root: dataset root (record file names are relative to it).
        records: every image of the dataset, in output order.
        info: COCO ``info`` (no patient data).
        faint_labels: ``drop`` or ``keep`` YOLO boxes of nodules flagged faint (COCO and csv keep all, flagged).
        negatives: nodule-free twins as negative images in the detector files.
        val_fraction: share of CTs (or of images, with one CT) in the validation split.
    """
    root = Path(root)
    records = list(records)
    write_coco(root / "annotations" / "coco.json", records, info)
    write_yolo_labels(root, records, faint_labels=faint_labels)
    write_node21_csv(root / "metadata.csv", records)
    return write_detector_dataset(
        root, records, faint_labels=faint_labels, negatives=negatives, val_fraction=val_fraction, info=info
    )
