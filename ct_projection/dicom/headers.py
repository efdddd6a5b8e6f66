"""Per-image slice geometry and rescale from DICOM headers (single-frame and enhanced multi-frame files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ct_projection.dicom.files import dicom_files, probe
from ct_projection.volume import CTInputError, clean_text

# Direction cosines off unit length or off perpendicular by more than this are broken, not rounding: a 0.06° skew
# already moves the far edge of a 400 mm field of view by 0.4 mm.
ORIENTATION_TOLERANCE = 1e-3


def series_ident(series_uid: str, series_number: int | None) -> str:
    """Series identity: the SeriesInstanceUID, or SeriesNumber when exports leave the UID empty."""
    return series_uid or f"series-number-{series_number if series_number is not None else 'none'}"


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
    def ident(self) -> str:
        """Series identity (UID, else SeriesNumber)."""
        return series_ident(self.series_uid, self.series_number)

    @property
    def name(self) -> str:
        """File name (and frame) for messages."""
        return self.path.name + (f" frame {self.frame + 1}" if self.frame is not None else "")

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row × column direction, LPS)."""
        n = np.cross(self.row, self.col)
        return n / np.linalg.norm(n)


@dataclass
class BadSlice:
    """An image whose slice geometry is absent (dose report, screenshot) or unusable (NaN, zero, skewed)."""

    path: Path
    frame: int | None
    ident: str
    problem: str
    absent: bool  # no geometry at all, as secondary captures have: skipped unless it belongs to the chosen series
    is_localizer: bool
    shape: tuple[int, int]  # (rows, columns)

    @property
    def name(self) -> str:
        """File name (and frame) for messages."""
        return self.path.name + (f" frame {self.frame + 1}" if self.frame is not None else "")


class _GeometryError(Exception):
    """Raised while expanding a header: one image has no or unusable slice geometry."""

    def __init__(self, problem: str, frame: int | None, absent: bool) -> None:
        super().__init__(problem)
        self.problem, self.frame, self.absent = problem, frame, absent


def _shown(values: Any) -> str:
    return "\\".join(f"{float(v):g}" for v in values)


def geometry_problem(ipp: np.ndarray, iop: np.ndarray, spacing: np.ndarray) -> str | None:
    """Why one image's position, orientation or pixel spacing cannot place its pixels (None when they can)."""
    if not np.isfinite(ipp).all():
        return f"ImagePositionPatient {_shown(ipp)} is not a finite position"
    if not np.isfinite(iop).all():
        return f"ImageOrientationPatient {_shown(iop)} holds NaN or Inf"
    row, col = iop[:3], iop[3:]
    lengths = np.array([np.linalg.norm(row), np.linalg.norm(col)])
    if (lengths < 1e-6).any():
        return f"ImageOrientationPatient {_shown(iop)} has a zero direction vector"
    if (np.abs(lengths - 1.0) > ORIENTATION_TOLERANCE).any():
        return f"ImageOrientationPatient {_shown(iop)} is not two unit vectors (lengths {_shown(lengths)})"
    cosine = float(row @ col) / float(lengths.prod())
    if abs(cosine) > ORIENTATION_TOLERANCE:
        angle = np.degrees(np.arccos(np.clip(cosine, -1, 1)))
        return (
            f"ImageOrientationPatient {_shown(iop)}: row and column directions are {angle:.2f}° apart, not 90° "
            "(a skewed pixel grid)"
        )
    if not np.isfinite(spacing).all() or (spacing <= 0).any():
        return f"PixelSpacing {_shown(spacing)} mm: both spacings must be positive numbers"
    return None


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
    if common["rows"] < 1 or common["columns"] < 1:  # type: ignore[operator]
        raise _GeometryError(f"Rows × Columns is {ds.Rows} × {ds.Columns}: an image without pixels", None, False)
    frames = int_or_none(ds.get("NumberOfFrames")) or 1
    if frames == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        ipp = _floats(ds.get("ImagePositionPatient"), 3)
        iop = _floats(ds.get("ImageOrientationPatient"), 6)
        spacing = _floats(ds.get("PixelSpacing"), 2)
        _require_geometry(ds, ipp, iop, spacing, None)
        return [
            SliceHeader(
                frame=None,
                ipp=ipp,
                row=iop[:3] / np.linalg.norm(iop[:3]),
                col=iop[3:] / np.linalg.norm(iop[3:]),
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
        _require_geometry(ds, ipp, iop, spacing, f)
        rs = rescale or ds
        headers.append(
            SliceHeader(
                frame=f,
                ipp=ipp,
                row=iop[:3] / np.linalg.norm(iop[:3]),
                col=iop[3:] / np.linalg.norm(iop[3:]),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                slope=float(rs.get("RescaleSlope", 1) or 1),
                intercept=float(rs.get("RescaleIntercept", 0) or 0),
                thickness=float_or_none((meas or ds).get("SliceThickness")),
                **common,
            )
        )
    return headers


def _require_geometry(
    ds: Dataset, ipp: np.ndarray | None, iop: np.ndarray | None, spacing: np.ndarray | None, frame: int | None
) -> None:
    """Raise _GeometryError unless position, orientation and pixel spacing are present and usable."""
    fields = (("ImagePositionPatient", ipp), ("ImageOrientationPatient", iop), ("PixelSpacing", spacing))
    missing = [keyword for keyword, value in fields if value is None]
    if missing:
        present = [k for k in missing if k in ds and ds.get(k) not in (None, "")]
        if present and frame is None:  # a tag that is there but not 3/6/2 numbers is broken, not absent
            shown = clean_text(ds.get(present[0]), 60)
            raise _GeometryError(f"{present[0]} '{shown}' is not a list of numbers", frame, False)
        where = "per-frame " if frame is not None else ""
        raise _GeometryError(f"DICOM image lacks {where}{'/'.join(missing)}", frame, True)
    problem = geometry_problem(ipp, iop, spacing)  # type: ignore[arg-type]
    if problem:
        raise _GeometryError(problem, frame, False)


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


def scan(path: Path) -> tuple[list[SliceHeader], list[BadSlice]]:
    """Slice headers of every DICOM image in a folder (recursive) or one file, and the images without usable geometry.

    Raises:
        CTInputError: a file marked as DICOM is truncated or corrupt (it may be one of the slices, so the folder is
            refused rather than read without it), or the folder holds DICOM objects but no images.
    """
    path = Path(path)
    files = dicom_files(path) if path.is_dir() else [path]
    headers: list[SliceHeader] = []
    bad: list[BadSlice] = []
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
        except _GeometryError as err:
            image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
            uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
            ident = series_ident(uid, int_or_none(ds.get("SeriesNumber")))
            shape = (int_or_none(ds.get("Rows")) or 0, int_or_none(ds.get("Columns")) or 0)
            bad.append(BadSlice(f, err.frame, ident, err.problem, err.absent, "LOCALIZER" in image_type, shape))
    if not headers and not bad and non_images:
        kinds = ", ".join(sorted(set(non_images)))
        raise CTInputError(
            path, f"no DICOM images found: {len(non_images)} DICOM file(s) without image pixels ({kinds})"
        )
    return headers, bad
