"""Synthetic CT inputs for the ingest tests: an analytic chest phantom written as DICOM, NIfTI, NRRD or MetaImage.

Inputs are tiny (~30³ voxels at ~10 mm) and analytic: a chest phantom (body ellipse, two lungs of different size,
an off-centre marker blob) evaluated at each format's own voxel centres, so a loaded volume must equal the phantom
evaluated at *its* voxel centres. Resampling tests use a linear HU field, which linear interpolation reproduces
exactly, so any geometry error shows up as a value error.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ct_projection.volume import CTInputError, CTVolume

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT_DATA = SHARED / "ct"

MARKER_RAS = np.array([20.0, 70.0, 35.0])  # right, anterior, superior of centre: asymmetric on every axis
LUNGS = (((55.0, 0.0, 10.0), (45.0, 60.0, 110.0)), ((-55.0, 0.0, 0.0), (40.0, 55.0, 100.0)))  # right, left


# ----------------------------------------------------------------------------------------------- phantoms


def phantom(ras: np.ndarray, *, lungs: bool = True) -> np.ndarray:
    """Chest phantom HU at RAS world points (..., 3): air −1000, body 0, lungs −850, a 700 HU marker blob."""
    x, y = ras[..., 0], ras[..., 1]
    hu = np.full(x.shape, -1000.0)
    hu[(x / 140.0) ** 2 + (y / 110.0) ** 2 <= 1.0] = 0.0
    if lungs:
        for centre, radii in LUNGS:
            hu[(((ras - centre) / radii) ** 2).sum(-1) <= 1.0] = -850.0
    hu += 700.0 * np.exp(-((ras - MARKER_RAS) ** 2).sum(-1) / (2 * 12.0**2))
    return np.round(hu)


def linear_field(ras: np.ndarray) -> np.ndarray:
    """Smooth HU field that trilinear interpolation reproduces exactly; never equals the −1024 fill value."""
    return 2.0 * ras[..., 0] + 1.5 * ras[..., 1] + 1.0 * ras[..., 2]


def voxel_world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """RAS world coordinates (I, J, K, 3) of every voxel centre."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def lps_to_ras(p: np.ndarray) -> np.ndarray:
    return p * np.array([-1.0, -1.0, 1.0])


def marker_centroid(vol: CTVolume) -> np.ndarray:
    """HU-weighted world centroid of the marker blob (the only thing above 100 HU)."""
    w = np.clip(vol.hu - 100.0, 0, None)
    world = voxel_world(vol.affine, vol.shape)
    return (world * w[..., None]).sum((0, 1, 2)) / w.sum()


def assert_matches_phantom(vol: CTVolume) -> None:
    """Canonical RAS+ axis-aligned grid, and the HU equal the phantom at the loaded voxel centres."""
    offdiag = vol.affine[:3, :3] - np.diag(np.diag(vol.affine[:3, :3]))
    assert np.abs(offdiag).max() < 1e-6 and (np.diag(vol.affine[:3, :3]) > 0).all()
    expected = phantom(voxel_world(vol.affine, vol.shape))
    assert np.mean(np.abs(vol.hu - expected) > 1.0) < 1e-3
    assert np.linalg.norm(marker_centroid(vol) - MARKER_RAS) < 3.0


# 30 slices × 28 rows × 34 columns; row/column/slice spacings differ so axis mix-ups cannot cancel out.
ROWS, COLS, SLICES = 28, 34, 30
ROW_MM, COL_MM, SLICE_MM = 10.0, 9.0, 11.0
ORIGIN_LPS = np.array([-148.7, -137.3, -158.6])


def write_slice(
    path: Path,
    hu: np.ndarray,
    ipp: np.ndarray,
    *,
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    spacing: tuple[float, float] = (ROW_MM, COL_MM),
    series_uid: str = "1.2.3.4.100",
    study_uid: str = "1.2.3.4.1",
    series_number: int = 2,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    instance: int = 1,
    thickness: float = SLICE_MM,
    description: str = "phantom",
    **extra: object,
) -> Path:
    """One CT slice as a real DICOM file (uint16 stored values, rescale to HU)."""
    stored = np.round((hu - intercept) / slope).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-12345"
    ds.StudyDate = "20240131"
    ds.InstitutionName = "General Hospital"
    ds.Modality = modality
    ds.Manufacturer = "Phantom Inc"
    ds.ConvolutionKernel = "B30f"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = thickness
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def slice_pixels_ras(ipp: np.ndarray, iop: tuple[float, ...], rows: int = ROWS, cols: int = COLS,
                     spacing: tuple[float, float] = (ROW_MM, COL_MM)) -> np.ndarray:
    """RAS world positions (rows, cols, 3) of one slice's pixels."""
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lps = ipp + c[..., None] * spacing[1] * row + r[..., None] * spacing[0] * col
    return lps_to_ras(lps)


def write_series(
    folder: Path,
    *,
    field=phantom,
    positions: list[np.ndarray] | None = None,
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    names: list[str] | None = None,
    n: int = SLICES,
    **kw: object,
) -> list[Path]:
    """A series of slices stacked along the normal (or at ``positions``), one file each."""
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row, col)
    if positions is None:
        positions = [ORIGIN_LPS + k * SLICE_MM * normal for k in range(n)]
    paths = []
    for k, ipp in enumerate(positions):
        name = names[k] if names else f"slice{k:03d}.dcm"
        hu = field(slice_pixels_ras(np.asarray(ipp), iop))
        paths.append(write_slice(folder / name, hu, np.asarray(ipp), iop=iop, instance=k + 1, **kw))
    return paths


def write_nifti(path: Path, *, lungs: bool = True, dtype=np.int16) -> tuple[np.ndarray, np.ndarray]:
    """Phantom NIfTI stored S-L-P (axes permuted and two flipped) at 11 × 9 × 10 mm."""
    affine = np.array(
        [[0.0, -9.0, 0.0, 148.7], [0.0, 0.0, -10.0, 137.3], [11.0, 0.0, 0.0, -158.6], [0, 0, 0, 1]]
    )
    data = phantom(voxel_world(affine, (30, 34, 28)), lungs=lungs).astype(dtype)
    nib.save(nib.Nifti1Image(data, affine), path)
    return data, affine


def write_itk(path: Path, direction: np.ndarray) -> None:
    """Phantom via SimpleITK (LPS geometry) with the given direction matrix."""
    spacing = np.array([9.0, 10.0, 11.0])
    size = (34, 28, 30)
    centre_index = (np.array(size) - 1) / 2
    origin = -(direction * spacing) @ centre_index + np.array([1.3, -2.7, 3.1])
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing
    affine_lps[:3, 3] = origin
    affine_ras = np.diag([-1.0, -1, 1, 1]) @ affine_lps
    data = phantom(voxel_world(affine_ras, size)).astype(np.int16)  # (x, y, z) index order
    img = sitk.GetImageFromArray(data.transpose(2, 1, 0))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(origin.tolist())
    img.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(img, str(path))


def one_line(err: pytest.ExceptionInfo[CTInputError], path: Path, *fragments: str) -> str:
    """The message is one line, names the file and contains every fragment."""
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg
