"""Read one DICOM CT series (folder or file) into HU with its voxel → LPS affine and non-identifying facts.

One CT is one scan of one patient: a chosen series whose images carry different PatientIDs is refused, and so is
a folder holding a file marked as DICOM ('DICM') that cannot be parsed (truncated/corrupt: it may be a slice).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ct_projection.dicom.files import probe
from ct_projection.dicom.geometry import assemble
from ct_projection.dicom.headers import SliceHeader, float_or_none, scan
from ct_projection.dicom.pixels import load_pixels
from ct_projection.dicom.series import check_one_patient, check_whole_series, choose_series, group_series
from ct_projection.volume import CTInputError, check_size, clean_text

DICOM_TEXT = 64  # LO, the longest VR among the copied text attributes (SH and CS are 16)


@dataclass
class DicomVolume:
    """A decoded series: HU array with its voxel → LPS-world affine, the files used and non-identifying facts."""

    hu: np.ndarray
    affine_lps: np.ndarray
    files: list[Path]
    info: dict[str, Any]


def read_series(path: Path, series_uid: str | None = None) -> DicomVolume:
    """Read the CT series in a folder (or the series containing one DICOM file) as HU with an LPS affine.

    Args:
        path: a folder searched recursively, or one DICOM file (its folder's series that contains it is used).
        series_uid: SeriesInstanceUID, SeriesNumber (as error messages list them) or fallback key of the series to use.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.is_dir():
        _, kind, corrupt = probe(path)
        if corrupt is not None:
            raise CTInputError(path, f"cannot read: file is truncated or corrupt ({corrupt})")
        if kind is not None:
            raise CTInputError(path, f"cannot read: not a DICOM image (a {kind} object without image pixels)")
    headers, bad = scan(folder)
    own_bad = [b for b in bad if b.path == path]
    if own_bad:
        raise CTInputError(path, f"{own_bad[0].name}: {own_bad[0].problem}")
    if not headers:
        broken = [b for b in bad if not b.absent] or bad
        if broken:
            b = broken[0]
            prefix = "" if broken[0].absent else f"{b.name}: "
            raise CTInputError(path, f"no DICOM images with slice geometry found ({prefix}{b.problem})")
        problem = "no DICOM files found in folder" if path.is_dir() else "cannot read: not a DICOM image"
        raise CTInputError(path, problem)
    all_series = series = group_series(headers)
    if not path.is_dir():
        own = [s for s in series if any(h.path == path for h in s.slices)]
        if not own:
            raise CTInputError(path, "cannot read: not a DICOM image")
        series = own
    chosen = choose_series(series, path, series_uid)
    check_whole_series(
        path, chosen, all_series, bad, chosen_by_user=series_uid is not None or not path.is_dir(),
        grid_by_user=series_uid is not None and series_uid == chosen.key and "#" in chosen.key,
    )
    # One CT is one patient: mixed exports are refused, never silently half-used (IDs stay out of the message).
    check_one_patient(path, chosen.slices, f"series {chosen.first.series_number} ({len(chosen.slices)} images)")
    slices = chosen.slices
    first = slices[0]
    check_size(path, (first.rows, first.columns, len(slices)), "declared size")
    stack = load_pixels(path, slices)
    hu, affine, notes, kept = assemble(path, slices, stack)
    files = sorted({s.path for s in kept})
    ct_series = [s for s in series if s.first.modality in ("CT", "")]
    info = _describe(first, kept, notes)
    if len(ct_series) > 1:
        info["series_choice"] = (
            f"chose 1 of {len(ct_series)} CT series (most axial images; lowest series number on ties)"
        )
    return DicomVolume(hu=hu, affine_lps=affine, files=files, info=info)


def _describe(first: SliceHeader, kept: list[SliceHeader], notes: list[str]) -> dict[str, Any]:
    """Non-identifying acquisition facts (no names, IDs, dates, UIDs, institution or free-text descriptions).

    ``info`` ends up in dataset.json, so it follows DICOM PS3.15 Annex E's basic profile: Series/Study Description
    and UIDs are removed (they stay on the in-memory SliceHeader for terminal-only error messages). Text values are
    cut to the 64 characters of DICOM's LO value representation and cleaned of non-printable characters.
    """
    ds = first.header
    kernel = ds.get("ConvolutionKernel")
    if kernel is not None and not isinstance(kernel, str):
        kernel = "\\".join(str(k) for k in kernel)
    info: dict[str, Any] = {
        "format": "DICOM",
        "modality": clean_text(first.modality, DICOM_TEXT) or "unknown",
        "manufacturer": clean_text(ds.get("Manufacturer", "") or "", DICOM_TEXT),
        "model": clean_text(ds.get("ManufacturerModelName", "") or "", DICOM_TEXT),
        "convolution_kernel": clean_text(kernel or "", DICOM_TEXT),
        "slice_thickness_mm": first.thickness,
        "pixel_spacing_mm": [float(v) for v in first.pixel_spacing],
        "source_slices": len(kept),
        "series_number": first.series_number,
        "body_part": clean_text(ds.get("BodyPartExamined", "") or "", DICOM_TEXT),
        "transfer_syntax": _transfer_syntax_name(ds),
    }
    tilt = float_or_none(ds.get("GantryDetectorTilt"))
    if tilt:
        info["gantry_tilt_deg"] = tilt
    info["corrections"] = list(notes)
    return info


def _transfer_syntax_name(ds: Dataset) -> str:
    """Transfer syntax by name (e.g. 'JPEG 2000 Image Compression (Lossless Only)'), not by UID."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return str(getattr(uid, "name", "") or "") if uid else ""
