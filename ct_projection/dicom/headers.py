"""Per-image slice geometry and rescale from DICOM headers (single-frame and enhanced multi-frame files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ct_projection.dicom.files import dicom_files, probe
from ct_projection.volume import CTInputError


@dataclass
class SliceHeader:
    """Geometry and rescale of one 2D image (a single-frame file or one frame of a multi-frame file)."""

    path: Path
    frame: int | None
    ipp: np.ndarray
    row: np.ndarray
    col: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm
    rows: int
    columns: int
    slope: float
    intercept: float
    thickness: float | None
    series_uid: str
    series_number: int | None
    description: str
    modality: str
    is_localizer: bool
    header: Dataset = field(repr=False)

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row × column direction, LPS)."""
        n = np.cross(self.row, self.col)
        return n / np.linalg.norm(n)


def _floats(value: Any, n: int) -> np.ndarray | None:
    """A DICOM multi-value as a float array of length n, or None when absent/malformed."""
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) else None


def _functional(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Item of a functional group for one frame of an enhanced multi-frame image (per-frame, else shared)."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        items = seq[index].get(sequence) if seq is not None and len(seq) > index else None
        if items:
            return items[0]
    return None


def slice_headers(path: Path, ds: Dataset) -> list[SliceHeader]:
    """Expand one file's header into per-image slice headers (several for a multi-frame file)."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    common = dict(
        path=path,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        series_number=int_or_none(ds.get("SeriesNumber")),
        description=str(ds.get("SeriesDescription", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        is_localizer="LOCALIZER" in image_type,
        header=ds,
    )
    frames = int_or_none(ds.get("NumberOfFrames")) or 1
    if frames == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        ipp = _floats(ds.get("ImagePositionPatient"), 3)
        iop = _floats(ds.get("ImageOrientationPatient"), 6)
        spacing = _floats(ds.get("PixelSpacing"), 2)
        if ipp is None or iop is None or spacing is None:
            raise CTInputError(path, "DICOM image lacks ImagePositionPatient/ImageOrientationPatient/PixelSpacing")
        return [
            SliceHeader(
                frame=None,
                ipp=ipp,
                row=iop[:3],
                col=iop[3:],
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                slope=float(ds.get("RescaleSlope", 1) or 1),
                intercept=float(ds.get("RescaleIntercept", 0) or 0),
                thickness=float_or_none(ds.get("SliceThickness")),
                **common,
            )
        ]
    headers = []
    for f in range(frames):
        pos = _functional(ds, f, "PlanePositionSequence")
        ori = _functional(ds, f, "PlaneOrientationSequence")
        meas = _functional(ds, f, "PixelMeasuresSequence")
        rescale = _functional(ds, f, "PixelValueTransformationSequence")
        ipp = _floats(pos.get("ImagePositionPatient") if pos else None, 3)
        iop = _floats((ori or ds).get("ImageOrientationPatient"), 6)
        spacing = _floats((meas or ds).get("PixelSpacing"), 2)
        if ipp is None or iop is None or spacing is None:
            raise CTInputError(path, f"multi-frame DICOM without per-frame position/orientation ({frames} frames)")
        rs = rescale or ds
        headers.append(
            SliceHeader(
                frame=f,
                ipp=ipp,
                row=iop[:3],
                col=iop[3:],
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                slope=float(rs.get("RescaleSlope", 1) or 1),
                intercept=float(rs.get("RescaleIntercept", 0) or 0),
                thickness=float_or_none((meas or ds).get("SliceThickness")),
                **common,
            )
        )
    return headers


def int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def float_or_none(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def scan(path: Path) -> list[SliceHeader]:
    """Slice headers of every DICOM image with slice geometry in a folder (recursive), or of one file.

    Raises:
        CTInputError: a file marked as DICOM is truncated or corrupt (it may be one of the slices, so the folder is
            refused rather than read without it), or the folder holds DICOM objects but no images.
    """
    path = Path(path)
    files = dicom_files(path) if path.is_dir() else [path]
    headers: list[SliceHeader] = []
    unusable: CTInputError | None = None
    non_images: list[str] = []
    for f in files:
        ds, kind, corrupt = probe(f)
        if corrupt is not None:
            raise CTInputError(path, f"cannot read: {f.name} is truncated or corrupt ({corrupt})")
        if ds is None:
            if kind is not None:
                non_images.append(kind)
            continue
        try:
            headers.extend(slice_headers(f, ds))
        except CTInputError as err:
            # Dose reports and other secondary captures have pixels but no slice geometry: skip them.
            unusable = unusable or err
    if not headers and unusable is not None:
        raise CTInputError(path, f"no DICOM images with slice geometry found ({unusable.problem})")
    if not headers and non_images:
        kinds = ", ".join(sorted(set(non_images)))
        raise CTInputError(
            path, f"no DICOM images found: {len(non_images)} DICOM file(s) without image pixels ({kinds})"
        )
    return headers
