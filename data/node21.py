"""NODE21-style ``metadata.csv``: one row per nodule (label 1), one all-zero row per nodule-free image (label 0).

NODE21's six columns come first, unchanged; ``faint`` (0/1, or empty when unknown) and ``conspicuity`` (nodule
contrast / local background structure, see ct_projection/labels.py) follow, so NODE21 readers that take the first
six columns by name keep working.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from data.atomic import atomic_write_text
from data.records import ImageRecord

HEADER = ("img_name", "x", "y", "width", "height", "label")
EXTRA = ("faint", "conspicuity")


class Node21Row(NamedTuple):
    """One metadata.csv row; integer pixel box (x, y top-left)."""

    img_name: str
    x: int
    y: int
    width: int
    height: int
    label: int
    faint: int | None = None
    conspicuity: float | None = None


def _faint(attributes: dict) -> int | None:
    """0/1 from a label's ``faint`` attribute, None when it was never decided."""
    value = attributes.get("faint")
    return None if value is None else int(bool(value))


def _conspicuity(attributes: dict) -> float | None:
    value = attributes.get("conspicuity")
    return None if value is None else round(float(value), 4)


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
            rows.append(
                Node21Row(
                    name, x0, y0, max(x1 - x0, 0), max(y1 - y0, 0), 1, _faint(n.attributes), _conspicuity(n.attributes)
                )
            )
    return rows


def write_node21_csv(path: str | Path, records: list[ImageRecord]) -> Path:
    """Atomically write metadata.csv: ``img_name,x,y,width,height,label,faint,conspicuity`` ("\\n" line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER + EXTRA)
    for row in node21_rows(records):
        writer.writerow(["" if v is None else v for v in row])
    return atomic_write_text(path, buf.getvalue())


def read_node21_csv(path: str | Path) -> list[Node21Row]:
    """Read metadata.csv rows: NODE21's six columns, optionally followed by ``faint,conspicuity``."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) not in (HEADER, HEADER + EXTRA):
            raise ValueError(f"{path}: header must be {','.join(HEADER)}[,{','.join(EXTRA)}], got {header}")
        rows = []
        for lineno, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise ValueError(f"{path}:{lineno}: expected {len(header)} fields, got {len(fields)}")
            extra = fields[len(HEADER) :]
            faint = int(extra[0]) if extra and extra[0] != "" else None
            conspicuity = float(extra[1]) if len(extra) > 1 and extra[1] != "" else None
            rows.append(Node21Row(fields[0], *(int(v) for v in fields[1 : len(HEADER)]), faint, conspicuity))
    return rows
