"""Grouping slice headers into series and choosing the one CT series of a folder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ct_projection.dicom.headers import SliceHeader
from ct_projection.volume import CTInputError


@dataclass
class DicomSeries:
    """Slices that share a series and a pixel grid (orientation, size, pixel spacing)."""

    key: str
    slices: list[SliceHeader]

    @property
    def first(self) -> SliceHeader:
        """Representative header."""
        return self.slices[0]

    @property
    def is_axial(self) -> bool:
        """Slice normal within 45° of the head–foot axis (a tilted axial series still counts)."""
        return abs(float(self.first.normal[2])) > math.cos(math.radians(45))

    def describe(self) -> str:
        """Short summary for messages, without UIDs or free-text descriptions (identifying under PS3.15 Annex E)."""
        f = self.first
        number = f"series {f.series_number}" if f.series_number is not None else "unnumbered series"
        thickness = f"{f.thickness:g} mm" if f.thickness else "unknown thickness"
        return f"{number} ({f.modality or 'no modality'}, {len(self.slices)} slices, {thickness})"


def group_series(headers: list[SliceHeader]) -> list[DicomSeries]:
    """Group images by SeriesInstanceUID and pixel grid.

    Real exports can have empty Study/SeriesInstanceUIDs (the TotalSegmentator example), so the key falls back to
    SeriesNumber; orientation, matrix size and pixel spacing always split groups so a localizer or a reformat
    that shares a UID never mixes into the axial stack.
    """
    groups: dict[str, list[SliceHeader]] = {}
    for h in headers:
        grid = (
            tuple(np.round(np.concatenate([h.row, h.col]), 3).tolist()),
            h.rows,
            h.columns,
            tuple(round(s, 4) for s in h.pixel_spacing),
        )
        ident = h.series_uid or f"series-number-{h.series_number if h.series_number is not None else 'none'}"
        groups.setdefault(repr((ident, grid)), []).append(h)
    # Name each group by its UID; add a suffix only when one UID holds several grids.
    by_ident: dict[str, int] = {}
    result = []
    for key in sorted(groups):
        slices = groups[key]
        ident = slices[0].series_uid or f"series-number-{slices[0].series_number}"
        by_ident[ident] = by_ident.get(ident, 0) + 1
        name = ident if by_ident[ident] == 1 else f"{ident}#{by_ident[ident]}"
        result.append(DicomSeries(key=name, slices=slices))
    return result


def choose_series(series: list[DicomSeries], source: Path, series_uid: str | None = None) -> DicomSeries:
    """Pick the CT series to use: ``series_uid`` if given, else the axial CT with most images.

    Ties go to the lowest SeriesNumber, then the description, then the key, so the choice is deterministic.
    """
    if not series:
        raise CTInputError(source, "no DICOM files found in folder")
    if series_uid is not None:
        # A SeriesNumber (as listed in messages) or a SeriesInstanceUID / fallback key.
        by_number = series_uid.isdigit()
        matches = [
            s
            for s in series
            if s.first.series_uid == series_uid
            or s.key == series_uid
            or (by_number and s.first.series_number == int(series_uid))
        ]
        if not matches:
            listed = sorted(series, key=lambda s: (s.first.series_number is None, s.first.series_number or 0, s.key))
            available = "; ".join(s.describe() for s in listed)
            raise CTInputError(source, f"series_uid {series_uid!r} not found (available: {available})")
        candidates = matches
        non_ct = [s for s in candidates if s.first.modality not in ("CT", "")]
        if len(non_ct) == len(candidates):
            raise CTInputError(source, f"DICOM modality is {candidates[0].first.modality}, not CT")
    else:
        candidates = [s for s in series if s.first.modality in ("CT", "")]
        if not candidates:
            modalities = ", ".join(sorted({s.first.modality for s in series}))
            raise CTInputError(source, f"DICOM modality is {modalities}, not CT")
    # Prefer real volumes: drop localizers and single images whenever something else exists.
    volumes = [s for s in candidates if not s.first.is_localizer and len(s.slices) > 1]
    candidates = volumes or candidates

    def rank(s: DicomSeries) -> tuple[Any, ...]:
        number = s.first.series_number if s.first.series_number is not None else 1 << 30
        return (not s.is_axial, -len(s.slices), number, s.first.description, s.key)

    return sorted(candidates, key=rank)[0]


def check_one_patient(source: Path, slices: list[SliceHeader], what: str) -> None:
    """Refuse images of several patients (distinct non-empty PatientID values) in what should be one CT."""
    patients = {str(s.header.get("PatientID", "") or "").strip() for s in slices} - {""}
    if len(patients) > 1:
        raise CTInputError(
            source, f"{what} mixes {len(patients)} patients (different PatientID values); separate them"
        )
