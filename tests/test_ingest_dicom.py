"""DICOM ingest: which series of a folder is the CT, and how its slices become a regular grid (order, duplicates,
missing slices, uneven spacing, gantry tilt), on the analytic phantom of ``ingest_phantom``."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from ingest_phantom import (
    COL_MM,
    MARKER_RAS,
    ORIGIN_LPS,
    ROW_MM,
    SLICES,
    SLICE_MM,
    linear_field,
    marker_centroid,
    one_line,
    phantom,
    slice_pixels_ras,
    voxel_world,
    write_series,
    write_slice,
)
from scipy import ndimage

from ct_projection.ingest import load_ct
from ct_projection.volume import CTInputError, CTVolume


# --------------------------------------------------------------------------------- series selection


def test_two_series_in_one_folder_and_series_uid(tmp_path: Path) -> None:
    write_series(tmp_path / "study" / "s1", series_uid="1.2.3.4.100", series_number=3)
    write_series(tmp_path / "study" / "s2", series_uid="1.2.3.4.200", series_number=4, n=20, description="thin")
    vol = load_ct(tmp_path / "study")
    assert vol.shape[2] == SLICES and vol.info["series_number"] == 3
    assert "series_choice" in vol.info
    other = load_ct(tmp_path / "study", series_uid="1.2.3.4.200")
    assert other.shape[2] == 20 and other.info["series_number"] == 4
    assert "thin" not in repr(other.info)  # Series Description is free text: never in info (PS3.15 Annex E)
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path / "study", series_uid="9.9.9")
    msg = one_line(err, tmp_path / "study", "'9.9.9' not found", "series 3 (CT, 30 slices", "series 4 (CT, 20 slices")
    assert "1.2.3.4" not in msg  # UIDs identify the study (PS3.15 Annex E): the listing names series by number
    by_number = load_ct(tmp_path / "study", series_uid="4")
    assert by_number.shape[2] == 20


def test_series_tie_goes_to_lowest_series_number(tmp_path: Path) -> None:
    write_series(tmp_path / "x", series_uid="1.2.3.4.7", series_number=9, description="B")
    write_series(tmp_path / "y", series_uid="1.2.3.4.8", series_number=2, description="L")
    assert load_ct(tmp_path).info["series_number"] == 2


def test_empty_series_uid_falls_back_to_series_number(tmp_path: Path) -> None:
    write_series(tmp_path, series_uid="", study_uid="", series_number=5)
    write_series(tmp_path / "other", series_uid="", study_uid="", series_number=6, n=12)
    vol = load_ct(tmp_path)
    assert vol.shape[2] == SLICES
    assert load_ct(tmp_path, series_uid="series-number-6").shape[2] == 12


def test_mr_modality_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, modality="MR", n=10)
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path)
    one_line(err, tmp_path, "DICOM modality is MR, not CT")


# ------------------------------------------------------------------------------------ slice geometry


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path)
    paths[12].unlink()
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path)
    gap_at = ORIGIN_LPS[2] + 11 * SLICE_MM
    one_line(err, tmp_path, "missing slice", "gap of 22.00 mm", f"{gap_at:.2f}", f"of {SLICES - 1}")


def test_exact_duplicate_slice_is_dropped(tmp_path: Path) -> None:
    paths = write_series(tmp_path)
    shutil.copy(paths[4], tmp_path / "copy_of_4.dcm")
    vol = load_ct(tmp_path)
    assert vol.shape[2] == SLICES
    assert any("dropped 1 duplicate" in c for c in vol.info["corrections"])


def test_conflicting_duplicate_slice_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path)
    ds = pydicom.dcmread(paths[4])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    write_slice(tmp_path / "other.dcm", phantom(slice_pixels_ras(ipp, (1, 0, 0, 0, 1, 0))) + 50, ipp)
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path)
    one_line(err, tmp_path, "two different images at the same slice position")


def _interior(vol: CTVolume) -> np.ndarray:
    """Voxels filled from data, one voxel away from the fill value (so no blend with the −1024 border)."""
    return ndimage.binary_erosion(vol.hu != -1024.0, iterations=1)


def test_uneven_spacing_is_resampled_exactly(tmp_path: Path) -> None:
    z = np.concatenate([[0.0], np.cumsum(np.where(np.arange(SLICES - 1) % 2, 10.5, 11.5))])
    positions = [ORIGIN_LPS + np.array([0, 0, dz]) for dz in z]
    write_series(tmp_path, positions=positions, field=linear_field)
    vol = load_ct(tmp_path)
    assert any(c.startswith("resampled: uneven slice spacing") for c in vol.info["corrections"])
    np.testing.assert_allclose(vol.spacing, [COL_MM, ROW_MM, np.median(np.diff(z))])
    inside = _interior(vol)
    assert inside.sum() > 0.8 * vol.hu.size
    expected = linear_field(voxel_world(vol.affine, vol.shape))
    assert np.abs(vol.hu - expected)[inside].max() < 1.0  # only uint16 rounding of the stored values


def test_gantry_tilt_is_resampled_onto_world_axes(tmp_path: Path) -> None:
    tilt = math.radians(20.0)
    iop = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt))
    positions = [ORIGIN_LPS + np.array([0, 0, k * SLICE_MM]) for k in range(SLICES)]  # table moves along z only
    write_series(tmp_path, positions=positions, iop=iop, field=linear_field, GantryDetectorTilt=20.0)
    vol = load_ct(tmp_path)
    assert any("gantry tilt 20.0°" in c for c in vol.info["corrections"])
    offdiag = vol.affine[:3, :3] - np.diag(np.diag(vol.affine[:3, :3]))
    assert np.abs(offdiag).max() < 1e-9
    np.testing.assert_allclose(vol.spacing[2], SLICE_MM * math.cos(tilt), rtol=1e-6)
    inside = _interior(vol)
    assert inside.sum() > 0.3 * vol.hu.size
    expected = linear_field(voxel_world(vol.affine, vol.shape))
    assert np.abs(vol.hu - expected)[inside].max() < 1.0


def test_phantom_with_gantry_tilt_keeps_marker_position(tmp_path: Path) -> None:
    tilt = math.radians(15.0)
    iop = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt))
    positions = [ORIGIN_LPS + np.array([0, -10.0, k * 8.0]) for k in range(40)]
    write_series(tmp_path, positions=positions, iop=iop, thickness=8.0)
    vol = load_ct(tmp_path)
    assert np.linalg.norm(marker_centroid(vol) - MARKER_RAS) < 4.0


def test_single_slice_is_not_a_volume(tmp_path: Path) -> None:
    write_series(tmp_path, n=1)
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path)
    one_line(err, tmp_path, "a single 2D slice is not a volume")


def test_huge_declared_size_is_refused_before_allocating(tmp_path: Path) -> None:
    for k in range(3):
        write_slice(tmp_path / f"{k}.dcm", np.zeros((2, 2)), ORIGIN_LPS + [0, 0, k], Rows=40000, Columns=40000)
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path)
    one_line(err, tmp_path, "exceeds the 2 GiB limit")
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.int16)
    big = tmp_path / "big.nii"
    big.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1024)
    with pytest.raises(CTInputError) as err:
        load_ct(big)
    one_line(err, big, "declared size 4000×4000×4000", "exceeds the 2 GiB limit")



def test_images_without_geometry_are_skipped(tmp_path: Path) -> None:
    write_series(tmp_path, n=10)
    report = pydicom.dcmread(tmp_path / "slice000.dcm")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
        delattr(report, keyword)
    report.SeriesInstanceUID = "1.2.3.4.999"  # a dose-report screenshot in the same folder
    report.save_as(tmp_path / "dose_report.dcm")
    assert load_ct(tmp_path).shape[2] == 10
    for f in tmp_path.glob("slice*.dcm"):
        f.unlink()
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path)
    one_line(err, tmp_path, "no DICOM images with slice geometry found")
