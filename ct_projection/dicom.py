"""DICOM CT series: discovery, series choice, slice ordering, HU rescale and geometry repair.

Geometry decisions (all exercised by ``tests/test_ingest.py``):

* Slices are ordered by their distance along the slice normal ``n = row × col`` (from ImageOrientationPatient),
  never by file name or InstanceNumber.
* Duplicated positions: exact pixel duplicates are dropped (noted in ``info``); different pixels at the same
  position mean two scans are mixed, which is refused.
* One CT is one scan of one patient: a chosen series whose images carry different PatientIDs is refused, and so is
  a folder holding a file marked as DICOM ('DICM') that cannot be parsed (truncated/corrupt: it may be a slice).
* Missing slices: a gap ≥ 1.5× the usual spacing is refused (interpolating across it would invent anatomy). The
  usual spacing is the median gap within each run of slices of equal SliceThickness, so a series made of two
  contiguous blocks (e.g. 4 mm then 7 mm slices, like the GE tilt case) is *uneven*, not *missing*.
* Uneven spacing (gaps differ by > 1 %) and gantry tilt (slice origins not stacked along the normal, so the grid
  is sheared; SimpleITK silently reads such a series as an oblique volume with an averaged spacing) are
  **resampled**, not refused: the per-slice geometry (IPP, IOP, PixelSpacing) fully determines where every pixel
  lies, so the exact inverse mapping exists and a refusal would throw away usable, real chest CTs (tilted
  acquisitions are common on older scanners). For every target voxel the resampler finds its distance along the
  normal, the two slices around it, and the exact in-plane position of the point *in each of those two slices*
  (relative to that slice's own IPP), samples both bilinearly and blends them linearly along the normal. Sheared
  series go onto a world-axis-aligned grid; unsheared uneven series keep their in-plane grid.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from scipy import ndimage

from ct_projection.volume import CTInputError

AIR_HU = -1024.0
MAX_BYTES = 2 * 1024**3  # refuse volumes whose float32 array would exceed this, before allocating
GAP_FACTOR = 1.5  # a gap this many times the usual spacing is a missing slice
UNEVEN_TOLERANCE = 0.01  # relative spread of slice gaps above which the series is resampled
DUPLICATE_MM = 0.01  # slices closer than this along the normal share a position

# Files that are certainly not DICOM images; skipped without opening them.
_NON_DICOM_SUFFIXES = {
    ".txt", ".xml", ".json", ".csv", ".md", ".html", ".pdf", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".zip",
    ".gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw", ".zraw", ".py", ".yaml", ".yml", ".log", ".ini",
}


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


@dataclass
class DicomVolume:
    """A decoded series: HU array with its voxel → LPS-world affine, the files used and non-identifying facts."""

    hu: np.ndarray
    affine_lps: np.ndarray
    files: list[Path]
    info: dict[str, Any]


def looks_like_dicom(path: Path) -> bool:
    """Cheap check: the 'DICM' preamble, or a .dcm/.ima/.dicom suffix, or a suffix-less file that parses."""
    path = Path(path)
    if path.name.startswith(".") or path.suffix.lower() in _NON_DICOM_SUFFIXES or path.name.upper() == "DICOMDIR":
        return False
    try:
        if path.stat().st_size < 132:
            return False
        with path.open("rb") as fh:
            fh.seek(128)
            if fh.read(4) == b"DICM":
                return True
    except OSError:
        return False
    if path.suffix.lower() in {".dcm", ".ima", ".dicom"}:
        return True
    # Preamble-less files (old exports): accept only if a forced read finds an image header.
    return _read_header(path) is not None


def _has_preamble(path: Path) -> bool:
    """True when the file carries the Part 10 'DICM' marker (so it was written as DICOM)."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _probe(path: Path) -> tuple[Dataset | None, str | None, str | None]:
    """Classify one file: (image header, None, None), (None, non-image object kind, None), (None, None, why it is
    corrupt) or (None, None, None) when it is not DICOM at all."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001 - unreadable: corrupt if it claims to be DICOM, else just not DICOM
        return (None, None, one_line_reason(exc)) if _has_preamble(path) else (None, None, None)
    if "Rows" in ds and "Columns" in ds:
        return ds, None, None
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "") or "")
    if not sop:
        # Random bytes parsed by force=True; a DICM file without any SOP class is a broken header.
        return (None, None, "no SOP class and no image header") if _has_preamble(path) else (None, None, None)
    kind = pydicom.uid.UID(sop).name or sop
    if "Image Storage" in kind and "Rows" not in ds:
        return None, None, f"{kind} header ends before Rows/Columns"  # an image cut short inside its header
    return None, kind, None  # DICOMDIR, SR, presentation state, RT plan…: DICOM, but not an image


def _read_header(path: Path) -> Dataset | None:
    """Header without pixels, or None when the file is not a readable DICOM image."""
    return _probe(path)[0]


def study_key(path: Path) -> str:
    """StudyInstanceUID of a file ('' when empty or unreadable), read without pixels."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["StudyInstanceUID"])
    except Exception:  # noqa: BLE001
        return ""
    return str(ds.get("StudyInstanceUID", "") or "").strip()


def _dicom_files(folder: Path) -> list[Path]:
    """Candidate files below ``folder`` (recursive, sorted, hidden entries skipped)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(root) / name
            if name.startswith(".") or p.suffix.lower() in _NON_DICOM_SUFFIXES or name.upper() == "DICOMDIR":
                continue
            found.append(p)
    return found


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


def _slice_headers(path: Path, ds: Dataset) -> list[SliceHeader]:
    """Expand one file's header into per-image slice headers (several for a multi-frame file)."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    common = dict(
        path=path,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        series_number=_int_or_none(ds.get("SeriesNumber")),
        description=str(ds.get("SeriesDescription", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        is_localizer="LOCALIZER" in image_type,
        header=ds,
    )
    frames = _int_or_none(ds.get("NumberOfFrames")) or 1
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
                thickness=_float_or_none(ds.get("SliceThickness")),
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
                thickness=_float_or_none((meas or ds).get("SliceThickness")),
                **common,
            )
        )
    return headers


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float_or_none(value: Any) -> float | None:
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
    files = _dicom_files(path) if path.is_dir() else [path]
    headers: list[SliceHeader] = []
    unusable: CTInputError | None = None
    non_images: list[str] = []
    for f in files:
        ds, kind, corrupt = _probe(f)
        if corrupt is not None:
            raise CTInputError(path, f"cannot read: {f.name} is truncated or corrupt ({corrupt})")
        if ds is None:
            if kind is not None:
                non_images.append(kind)
            continue
        try:
            headers.extend(_slice_headers(f, ds))
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


def _check_size(source: Path, shape: tuple[int, ...], what: str) -> None:
    """Refuse absurd sizes before allocating them."""
    nbytes = 4 * math.prod(int(s) for s in shape)
    if nbytes > MAX_BYTES:
        dims = "×".join(str(int(s)) for s in shape)
        gib = nbytes / 1024**3
        raise CTInputError(source, f"{what} {dims} voxels ({gib:.1f} GiB as float32) exceeds the 2 GiB limit")


def _decode(path: Path) -> np.ndarray:
    """Stored pixel values of a file as (frames, rows, cols) float32 (pydicom; JPEG 2000 via pylibjpeg)."""
    ds = pydicom.dcmread(path, force=True)
    arr = ds.pixel_array
    if arr.ndim == 2:
        arr = arr[None]
    return arr.astype(np.float32)


def _decode_with_sitk(path: Path) -> np.ndarray:
    """Fallback decoder for transfer syntaxes pydicom's plugins cannot handle; GDCM already applies the rescale."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    arr = sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)
    return arr if arr.ndim == 3 else arr[None]


def _load_pixels(source: Path, slices: list[SliceHeader]) -> np.ndarray:
    """(K, rows, cols) HU stack in the order of ``slices``, rescale applied per image."""
    stack = np.empty((len(slices), slices[0].rows, slices[0].columns), dtype=np.float32)
    decoded: dict[Path, tuple[np.ndarray, bool]] = {}
    for k, s in enumerate(slices):
        if s.path not in decoded:
            try:
                decoded.clear()  # keep at most one multi-frame file in memory
                decoded[s.path] = (_decode(s.path), False)
            except Exception as exc:  # noqa: BLE001 - try the second decoder before giving up
                try:
                    decoded[s.path] = (_decode_with_sitk(s.path), True)
                except Exception:  # noqa: BLE001
                    raise CTInputError(source, f"cannot read: {_pixel_problem(s.path, exc)}") from exc
        frames, rescaled = decoded[s.path]
        frame = frames[s.frame or 0]
        if frame.shape != stack.shape[1:]:
            raise CTInputError(
                source, f"cannot read: {s.path.name} has pixel shape {frame.shape}, header says {stack.shape[1:]}"
            )
        stack[k] = frame if rescaled else frame * s.slope + s.intercept
    return stack


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _pixel_problem(path: Path, exc: BaseException) -> str:
    """Why neither decoder could read a file's pixels, in words (missing, unsupported syntax, truncated)."""
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as err:  # noqa: BLE001
        return f"{path.name} is truncated or corrupt ({one_line_reason(err)})"
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        return f"{path.name} has no pixel data (a header-only or cut-short file)"
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if ts:
        uid = pydicom.uid.UID(ts)
        if not uid.is_transfer_syntax or not _has_decoder(uid):
            name = uid.name if uid.is_transfer_syntax else "unknown or private"
            return (
                f"unsupported transfer syntax {ts} ({name}) in {path.name}: "
                "no installed decoder (pydicom, pylibjpeg, GDCM) can read it"
            )
        if not uid.is_compressed and "PixelData" in ds:
            frames = _int_or_none(ds.get("NumberOfFrames")) or 1
            samples = _int_or_none(ds.get("SamplesPerPixel")) or 1
            bits = _int_or_none(ds.get("BitsAllocated")) or 16
            need = int(ds.Rows) * int(ds.Columns) * frames * samples * bits // 8
            have = len(ds.PixelData)
            if have < need:
                return f"{path.name} is truncated: pixel data has {have} of {need} bytes"
    return f"pixel data of {path.name}: {one_line_reason(exc)}"


def _has_decoder(uid: pydicom.uid.UID) -> bool:
    """Whether pydicom has a usable decoder (plugin installed) for a transfer syntax."""
    try:
        from pydicom.pixels import get_decoder  # pydicom ≥ 3

        return bool(get_decoder(uid).is_available)
    except Exception:  # noqa: BLE001 - pydicom raises for syntaxes it has no decoder class for
        return False


def one_line_reason(exc: BaseException) -> str:
    """First meaningful line of an exception, for one-line messages."""
    text = " ".join(str(exc).split())
    return (text[:160] + "…") if len(text) > 160 else (text or type(exc).__name__)


def _blocks_expected_gap(gaps: np.ndarray, thickness: list[float | None]) -> np.ndarray:
    """Usual spacing for each gap: median gap inside its run of equal SliceThickness (max of the two runs)."""
    key = [round(t, 2) if t is not None else None for t in thickness]
    block = np.cumsum([0] + [int(key[i] != key[i - 1]) for i in range(1, len(key))])
    inner = block[:-1] == block[1:]
    overall = float(np.median(gaps))
    medians = {}
    for b in np.unique(block):
        in_block = gaps[inner & (block[:-1] == b)]
        medians[int(b)] = float(np.median(in_block)) if in_block.size else overall
    return np.array([max(medians[int(block[i])], medians[int(block[i + 1])]) for i in range(len(gaps))])


def assemble(
    source: Path, slices: list[SliceHeader], stack: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str], list[SliceHeader]]:
    """Order, de-duplicate, validate and (if needed) resample a stack into a regular grid.

    Returns:
        (array (A, B, C), voxel → LPS affine, corrections made, slices kept).
    """
    n = slices[0].normal
    row, col = slices[0].row / np.linalg.norm(slices[0].row), slices[0].col / np.linalg.norm(slices[0].col)
    d = np.array([float(s.ipp @ n) for s in slices])
    order = np.argsort(d, kind="stable")
    slices = [slices[i] for i in order]
    stack = stack[order]
    d = d[order]
    notes: list[str] = []

    # Duplicated positions: identical pixels → drop; different pixels → two scans are mixed.
    keep = [0]
    for k in range(1, len(slices)):
        if d[k] - d[keep[-1]] < DUPLICATE_MM:
            if not np.array_equal(stack[k], stack[keep[-1]]):
                raise CTInputError(
                    source,
                    f"two different images at the same slice position {d[k]:.2f} mm "
                    f"({slices[keep[-1]].path.name}, {slices[k].path.name}); the folder mixes scans — "
                    "pass series_uid or separate them",
                )
            continue
        keep.append(k)
    if len(keep) < len(slices):
        notes.append(f"dropped {len(slices) - len(keep)} duplicate slice(s)")
        slices, stack, d = [slices[i] for i in keep], stack[keep], d[keep]

    if len(slices) < 2:
        raise CTInputError(source, "a single 2D slice is not a volume (need a series of CT slices)")

    gaps = np.diff(d)
    expected = _blocks_expected_gap(gaps, [s.thickness for s in slices])
    missing = np.nonzero(gaps >= GAP_FACTOR * expected)[0]
    if missing.size:
        g = int(missing[0])
        raise CTInputError(
            source,
            f"missing slice(s): gap of {gaps[g]:.2f} mm between slice positions {d[g]:.2f} and {d[g + 1]:.2f} mm "
            f"(slices {g + 1} and {g + 2} of {len(slices)}) is {gaps[g] / expected[g]:.1f}× the usual "
            f"{expected[g]:.2f} mm spacing",
        )

    drow, dcol = slices[0].pixel_spacing
    ipp = np.stack([s.ipp for s in slices])
    offsets = ipp - ipp[0]
    off_normal = offsets - np.outer(offsets @ n, n)
    shear_mm = float(np.linalg.norm(off_normal, axis=1).max())
    sheared = shear_mm > 0.1 * min(drow, dcol)
    uneven = float(gaps.max() - gaps.min()) > UNEVEN_TOLERANCE * float(np.median(gaps))

    if not sheared and not uneven:
        spacing = float(d[-1] - d[0]) / (len(slices) - 1)
        affine = np.eye(4)
        affine[:3, 0] = row * dcol
        affine[:3, 1] = col * drow
        affine[:3, 2] = n * spacing
        affine[:3, 3] = ipp[0]
        return np.ascontiguousarray(stack.transpose(2, 1, 0)), affine, notes, slices

    # Target slice spacing: the finest usual spacing, so thin-slice parts keep their resolution.
    target = float(np.min(expected))
    if sheared:
        stacking = ipp[-1] - ipp[0]
        tag = _float_or_none(slices[0].header.get("GantryDetectorTilt"))
        angle = tag if tag else math.degrees(math.acos(min(1.0, abs(stacking @ n) / np.linalg.norm(stacking))))
        notes.append(f"resampled: gantry tilt {abs(angle):.1f}° (slice origins sheared by up to {shear_mm:.1f} mm)")
        # World-axis-aligned target: each source direction goes to its nearest LPS axis, sign kept.
        axes = np.zeros((3, 3))
        for a, v in enumerate((row, col, n)):
            axis = int(np.argmax(np.abs(v)))
            axes[:, a] = 0
            axes[axis, a] = np.sign(v[axis])
        if abs(np.linalg.det(axes)) < 0.5:
            raise CTInputError(source, "cannot resample: slice orientation is too oblique to map onto world axes")
    else:
        axes = np.stack([row, col, n], axis=1)
    if uneven:
        notes.append(f"resampled: uneven slice spacing {gaps.min():.2f}–{gaps.max():.2f} mm → {target:.2f} mm")
    spacings = np.array([dcol, drow, target])

    # Bounding box of all pixel centres of the first and last image, in target-axis coordinates.
    corners = np.array(
        [
            p + i * drow * col + j * dcol * row
            for p in (ipp[0], ipp[-1])
            for i in (0, slices[0].rows - 1)
            for j in (0, slices[0].columns - 1)
        ]
    )
    coords = corners @ axes
    lo, hi = coords.min(0), coords.max(0)
    shape = tuple(int(math.floor((hi[a] - lo[a]) / spacings[a] + 1e-6)) + 1 for a in range(3))
    _check_size(source, shape, "resampled grid")
    origin = axes @ lo
    out = _resample(stack, ipp, row, col, n, d, (drow, dcol), axes, spacings, origin, shape)
    affine = np.eye(4)
    affine[:3, :3] = axes * spacings
    affine[:3, 3] = origin
    return out, affine, notes, slices


def _resample(
    stack: np.ndarray,
    ipp: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    n: np.ndarray,
    d: np.ndarray,
    pixel_spacing: tuple[float, float],
    axes: np.ndarray,
    spacings: np.ndarray,
    origin: np.ndarray,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Sample a (possibly sheared, unevenly spaced) slice stack on a regular grid; see the module docstring."""
    drow, dcol = pixel_spacing
    out = np.empty(shape, dtype=np.float32)
    a = np.arange(shape[0]) * spacings[0]
    b = np.arange(shape[1]) * spacings[1]
    # In-plane part of each target point (same for every target plane c), in world mm.
    plane = origin + a[:, None, None] * axes[:, 0] + b[None, :, None] * axes[:, 1]
    plane_n, plane_r, plane_c = plane @ n, plane @ row, plane @ col
    ipp_r, ipp_c = ipp @ row, ipp @ col
    step = spacings[2] * axes[:, 2]
    k_index = np.arange(len(d), dtype=np.float64)
    for c in range(shape[2]):
        shift = c * step
        dist = plane_n + shift @ n
        k = np.interp(dist, d, k_index)
        k0 = np.clip(np.floor(k), 0, len(d) - 2).astype(np.intp)
        t = (k - k0).astype(np.float32)
        value = np.zeros(dist.shape, dtype=np.float32)
        for s, w in ((k0, 1.0 - t), (k0 + 1, t)):
            # Exact in-plane position of the point in slice s, relative to that slice's own origin.
            j = (plane_r + shift @ row - ipp_r[s]) / dcol
            i = (plane_c + shift @ col - ipp_c[s]) / drow
            sampled = ndimage.map_coordinates(stack, [s, i, j], order=1, mode="constant", cval=AIR_HU)
            value += w * sampled
        outside = (dist < d[0] - 1e-3) | (dist > d[-1] + 1e-3)
        value[outside] = AIR_HU
        out[:, :, c] = value
    return out


def read_series(path: Path, series_uid: str | None = None) -> DicomVolume:
    """Read the CT series in a folder (or the series containing one DICOM file) as HU with an LPS affine.

    Args:
        path: a folder searched recursively, or one DICOM file (its folder's series that contains it is used).
        series_uid: SeriesInstanceUID, SeriesNumber (as error messages list them) or fallback key of the series to use.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.is_dir():
        _, kind, corrupt = _probe(path)
        if corrupt is not None:
            raise CTInputError(path, f"cannot read: file is truncated or corrupt ({corrupt})")
        if kind is not None:
            raise CTInputError(path, f"cannot read: not a DICOM image (a {kind} object without image pixels)")
    headers = scan(folder)
    if not headers:
        problem = "no DICOM files found in folder" if path.is_dir() else "cannot read: not a DICOM image"
        raise CTInputError(path, problem)
    series = group_series(headers)
    if not path.is_dir():
        own = [s for s in series if any(h.path == path for h in s.slices)]
        if not own:
            raise CTInputError(path, "cannot read: not a DICOM image")
        series = own
    chosen = choose_series(series, path, series_uid)
    # One CT is one patient: mixed exports are refused, never silently half-used (IDs stay out of the message).
    _check_one_patient(path, chosen.slices, f"series {chosen.first.series_number} ({len(chosen.slices)} images)")
    slices = chosen.slices
    first = slices[0]
    _check_size(path, (first.rows, first.columns, len(slices)), "declared size")
    stack = _load_pixels(path, slices)
    hu, affine, notes, kept = assemble(path, slices, stack)
    files = sorted({s.path for s in kept})
    ct_series = [s for s in series if s.first.modality in ("CT", "")]
    info = _describe(first, kept, notes)
    if len(ct_series) > 1:
        info["series_choice"] = (
            f"chose 1 of {len(ct_series)} CT series (most axial images; lowest series number on ties)"
        )
    return DicomVolume(hu=hu, affine_lps=affine, files=files, info=info)


def _check_one_patient(source: Path, slices: list[SliceHeader], what: str) -> None:
    """Refuse images of several patients (distinct non-empty PatientID values) in what should be one CT."""
    patients = {str(s.header.get("PatientID", "") or "").strip() for s in slices} - {""}
    if len(patients) > 1:
        raise CTInputError(
            source, f"{what} mixes {len(patients)} patients (different PatientID values); separate them"
        )


def _describe(first: SliceHeader, kept: list[SliceHeader], notes: list[str]) -> dict[str, Any]:
    """Non-identifying acquisition facts (no names, IDs, dates, UIDs, institution or free-text descriptions).

    ``info`` ends up in dataset.json, so it follows DICOM PS3.15 Annex E's basic profile: Series/Study Description
    and UIDs are removed (they stay on the in-memory SliceHeader for terminal-only error messages).
    """
    ds = first.header
    kernel = ds.get("ConvolutionKernel")
    if kernel is not None and not isinstance(kernel, str):
        kernel = "\\".join(str(k) for k in kernel)
    info: dict[str, Any] = {
        "format": "DICOM",
        "modality": first.modality or "unknown",
        "manufacturer": str(ds.get("Manufacturer", "") or ""),
        "model": str(ds.get("ManufacturerModelName", "") or ""),
        "convolution_kernel": str(kernel or ""),
        "slice_thickness_mm": first.thickness,
        "pixel_spacing_mm": [float(v) for v in first.pixel_spacing],
        "source_slices": len(kept),
        "series_number": first.series_number,
        "body_part": str(ds.get("BodyPartExamined", "") or ""),
        "transfer_syntax": _transfer_syntax_name(ds),
    }
    tilt = _float_or_none(ds.get("GantryDetectorTilt"))
    if tilt:
        info["gantry_tilt_deg"] = tilt
    info["corrections"] = list(notes)
    return info


def _transfer_syntax_name(ds: Dataset) -> str:
    """Transfer syntax by name (e.g. 'JPEG 2000 Image Compression (Lossless Only)'), not by UID."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return str(getattr(uid, "name", "") or "") if uid else ""
