"""NODE21-style ``metadata.csv``: one row per nodule (label 1), one all-zero row per nodule-free image (label 0)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from data.atomic import atomic_write_text
from data.records import ImageRecord

HEADER = ("img_name", "x", "y", "width", "height", "label")


class Node21Row(NamedTuple):
    """One metadata.csv row; integer pixel box (x, y top-left)."""

    img_name: str
    x: int
    y: int
    width: int
    height: int
    label: int


def node21_rows(records: list[ImageRecord]) -> list[Node21Row]:
    """Rows for records; boxes rounded outward (floor x/y, ceil x+w/y+h) and clipped to the image."""
    rows = []
    for rec in records:
        name = PurePosixPath(rec.file_name).name  # NODE21 lists bare file names
        if not rec.nodules:
            rows.append(Node21Row(name, 0, 0, 0, 0, 0))
        for n in rec.nodules:
            x, y, w, h = n.bbox_xywh
            x0, y0 = max(math.floor(x), 0), max(math.floor(y), 0)
            x1, y1 = min(math.ceil(x + w), rec.width), min(math.ceil(y + h), rec.height)
            rows.append(Node21Row(name, x0, y0, max(x1 - x0, 0), max(y1 - y0, 0), 1))
    return rows


def write_node21_csv(path: str | Path, records: list[ImageRecord]) -> Path:
    """Atomically write metadata.csv with header ``img_name,x,y,width,height,label`` ("\\n" line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(node21_rows(records))
    return atomic_write_text(path, buf.getvalue())


def read_node21_csv(path: str | Path) -> list[Node21Row]:
    """Read metadata.csv rows; the header must be exactly ``img_name,x,y,width,height,label``."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) != HEADER:
            raise ValueError(f"{path}: header must be {','.join(HEADER)}, got {header}")
        rows = []
        for lineno, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(HEADER):
                raise ValueError(f"{path}:{lineno}: expected {len(HEADER)} fields, got {len(fields)}")
            rows.append(Node21Row(fields[0], *(int(v) for v in fields[1:])))
    return rows
