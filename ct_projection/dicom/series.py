"""Grouping slice headers into series and choosing the one CT series of a folder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ct_projection.dicom.headers import BadSlice, SliceHeader
from ct_projection.volume import CTInputError

SAME_ORIENTATION = 2e-3  # direction cosines closer than this are one orientation (≈ 0.1°), not two


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
    """Group images by series identity and pixel grid.

    Real exports can have empty Study/SeriesInstanceUIDs (the TotalSegmentator example), so the identity falls back
    to SeriesNumber; orientation, matrix size and pixel spacing always split groups so a localizer or a reformat
    that shares a UID never mixes into the axial stack (``check_whole_series`` then decides whether such a split
    is legitimate). Orientations within ``SAME_ORIENTATION`` of a group's first image join it, so rounding noise in
    the direction cosines never splits a stack.
    """
    groups: dict[str, list[SliceHeader]] = {}
    orientations: dict[tuple[Any, ...], list[np.ndarray]] = {}
    for h in headers:
        base = (h.ident, h.rows, h.columns, tuple(round(s, 4) for s in h.pixel_spacing))
        iop = np.concatenate([h.row, h.col])
        known = orientations.setdefault(base, [])
        match = next((r for r in known if np.abs(iop - r).max() <= SAME_ORIENTATION), None)
        if match is None:
            known.append(match := iop)
        groups.setdefault(repr(base + (tuple(np.round(match, 3).tolist()),)), []).append(h)
    # Name each group by its identity; add a suffix only when one identity holds several grids.
    by_ident: dict[str, int] = {}
    result = []
    for key in sorted(groups):
        slices = groups[key]
        ident = slices[0].ident
        by_ident[ident] = by_ident.get(ident, 0) + 1
        name = ident if by_ident[ident] == 1 else f"{ident}#{by_ident[ident]}"
        result.append(DicomSeries(key=name, slices=slices))
    return result


def check_whole_series(
    source: Path,
    chosen: DicomSeries,
    series: list[DicomSeries],
    bad: list[BadSlice],
    *,
    chosen_by_user: bool = False,
    grid_by_user: bool = False,
) -> None:
    """Refuse the chosen series when one of its images cannot join the stack, instead of dropping it silently.

    That is an image of the same series with unusable geometry (NaN position, zero or skewed orientation, zero
    pixel spacing), or one with the stack's matrix size whose orientation or pixel spacing differs from the rest.
    Localizers, and images of another matrix size without any geometry (screenshots), are not slices of the stack.
    When the series was chosen automatically, a larger set of broken images in another series is refused too: the
    CT the user meant is probably that one.

    Args:
        chosen_by_user: the user named the series (``series_uid``) or one of its files.
        grid_by_user: the user named this exact grid (``series_uid`` = 'UID#k'), so its siblings are theirs to drop.
    """
    f = chosen.first
    what = f"series {f.series_number}" if f.series_number is not None else "the series"
    size = (f.rows, f.columns)
    broken = [
        b for b in bad if b.ident == f.ident and not b.is_localizer and (not b.absent or b.shape == size)
    ]
    if broken:
        b = broken[0]
        more = f" (and {len(broken) - 1} more image(s))" if len(broken) > 1 else ""
        raise CTInputError(source, f"{b.name}: {b.problem}{more}; {what} is refused rather than read without it")
    elsewhere: dict[str, list[BadSlice]] = {}
    for b in bad:
        if not b.absent and not b.is_localizer:
            elsewhere.setdefault(b.ident, []).append(b)
    for group in elsewhere.values():
        if not chosen_by_user and len(group) >= max(2, len(chosen.slices)):
            b = group[0]
            raise CTInputError(
                source, f"{b.name}: {b.problem} (and {len(group) - 1} more image(s) of its series, the largest one)"
            )
    if grid_by_user:
        return
    for other in series:
        h = other.first
        if other is chosen or h.ident != f.ident or h.is_localizer or (h.rows, h.columns) != size:
            continue
        if np.abs(np.concatenate([h.row, h.col]) - np.concatenate([f.row, f.col])).max() > SAME_ORIENTATION:
            differs = (
                f"ImageOrientationPatient {_iop(h)} (the other {len(chosen.slices)} images of {what}: {_iop(f)})"
            )
        else:
            shown = "\\".join(f"{v:g}" for v in h.pixel_spacing)
            differs = f"PixelSpacing {shown} mm (the other {len(chosen.slices)} images of {what}: " + (
                "\\".join(f"{v:g}" for v in f.pixel_spacing) + " mm)"
            )
        count = f" and {len(other.slices) - 1} more image(s)" if len(other.slices) > 1 else ""
        raise CTInputError(
            source,
            f"{h.name}{count} has {differs}; an image that does not fit the stack is refused, not dropped "
            "(remove it, or export the series again)",
        )


def _iop(h: SliceHeader) -> str:
    return "\\".join(f"{v:.4g}" for v in np.concatenate([h.row, h.col]))


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
