"""CT ingest: every format lands on the same RAS+ world geometry in HU, and bad input fails with one clear line.

The inputs are the analytic phantoms of ``ingest_phantom``; DICOM series choice and slice geometry are tested in
``test_ingest_dicom.py``, degenerate and sheared grids in ``test_bad_geometry.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from ingest_phantom import (
    COLS,
    COL_MM,
    CT_DATA,
    MARKER_RAS,
    ORIGIN_LPS,
    ROWS,
    ROW_MM,
    SLICES,
    SLICE_MM,
    assert_matches_phantom,
    lps_to_ras,
    marker_centroid,
    one_line,
    phantom,
    slice_pixels_ras,
    write_itk,
    write_nifti,
    write_series,
    write_slice,
)
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from ct_projection.checks import check_plausible_chest_ct
from ct_projection.ingest import find_ct_inputs, load_ct
from ct_projection.lungs import lung_mask
from ct_projection.volume import CTInputError

# ------------------------------------------------------------------------------------------- formats


def test_nifti_with_flipped_permuted_affine_is_canonical_ras(tmp_path: Path) -> None:
    write_nifti(tmp_path / "ct.nii.gz")
    vol = load_ct(tmp_path / "ct.nii.gz")
    assert vol.info["axcodes"] == "RAS"
    assert vol.shape == (34, 28, 30)
    np.testing.assert_allclose(vol.spacing, [9.0, 10.0, 11.0])
    assert_matches_phantom(vol)
    assert len(vol.checksum) == 64


def test_nifti_scaling_is_applied(tmp_path: Path) -> None:
    data, affine = write_nifti(tmp_path / "plain.nii")
    img = nib.Nifti1Image((data + 1024).astype(np.uint16), affine)
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii")
    a, b = load_ct(tmp_path / "plain.nii"), load_ct(tmp_path / "scaled.nii")
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("ct.nrrd", np.diag([1.0, -1.0, 1.0])),
        ("ct.mha", np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])),
        ("ct.mhd", np.diag([-1.0, 1.0, -1.0])),
    ],
)
def test_itk_formats_convert_lps_to_ras(tmp_path: Path, name: str, direction: np.ndarray) -> None:
    write_itk(tmp_path / name, direction)
    vol = load_ct(tmp_path / name)
    assert vol.info["axcodes"] == "RAS"
    assert_matches_phantom(vol)


def test_dicom_series_geometry_and_rescale(tmp_path: Path) -> None:
    write_series(tmp_path / "series")
    vol = load_ct(tmp_path / "series")
    assert vol.shape == (COLS, ROWS, SLICES)
    np.testing.assert_allclose(vol.spacing, [COL_MM, ROW_MM, SLICE_MM])
    assert_matches_phantom(vol)


def test_dicom_per_slice_slope_and_intercept(tmp_path: Path) -> None:
    write_series(tmp_path / "a")
    folder = tmp_path / "b"
    folder.mkdir()
    for k in range(SLICES):
        ipp = ORIGIN_LPS + k * SLICE_MM * np.array([0, 0, 1.0])
        slope, intercept = ((2.0, -2048.0), (1.0, -1024.0), (0.5, -1100.0))[k % 3]
        write_slice(folder / f"{k}.dcm", phantom(slice_pixels_ras(ipp, (1, 0, 0, 0, 1, 0))), ipp,
                    slope=slope, intercept=intercept, instance=k + 1)
    a, b = load_ct(tmp_path / "a"), load_ct(folder)
    # Slope 2 stores values at 2 HU resolution; everything else is exact.
    assert np.abs(a.hu - b.hu).max() <= 1.0


def test_shuffled_renamed_files_sort_by_position(tmp_path: Path) -> None:
    write_series(tmp_path / "ordered")
    rng = np.random.default_rng(7)
    perm = rng.permutation(SLICES)
    positions = [ORIGIN_LPS + k * SLICE_MM * np.array([0, 0, 1.0]) for k in range(SLICES)]
    shuffled = [positions[i] for i in perm]
    names = [f"IMG{rng.integers(1e9):09d}" for _ in range(SLICES)]  # no suffix, random order
    write_series(tmp_path / "shuffled", positions=shuffled, names=names)
    (tmp_path / "shuffled" / "README").write_text("not a DICOM file")
    a, b = load_ct(tmp_path / "ordered"), load_ct(tmp_path / "shuffled")
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_allclose(a.affine, b.affine)
    assert a.checksum != b.checksum  # different files, different identity


def test_single_dicom_file_path_reads_its_series(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s")
    vol = load_ct(paths[5])
    assert vol.shape[2] == SLICES


def test_enhanced_multiframe_dicom(tmp_path: Path) -> None:
    iop = (1.0, 0, 0, 0, 1.0, 0)
    order = np.random.default_rng(3).permutation(SLICES)  # frames stored out of order
    positions = [ORIGIN_LPS + k * SLICE_MM * np.array([0, 0, 1.0]) for k in order]
    frames = [np.round(phantom(slice_pixels_ras(p, iop)) + 1024).astype(np.uint16) for p in positions]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "mf.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = "1.2.3.9"
    ds.NumberOfFrames = SLICES
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    shared = Dataset()
    measures, orientation, rescale = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [ROW_MM, COL_MM]
    measures.SliceThickness = SLICE_MM
    orientation.ImageOrientationPatient = list(iop)
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1024, "HU"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for p in positions:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [float(v) for v in p]
        item.PlanePositionSequence = [pos]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    vol = load_ct(tmp_path / "mf.dcm")
    assert vol.shape == (COLS, ROWS, SLICES)
    assert_matches_phantom(vol)


def test_every_format_agrees_on_the_marker_world_position(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a.nii.gz")
    write_itk(tmp_path / "b.nrrd", np.diag([1.0, -1.0, 1.0]))
    write_itk(tmp_path / "c.mha", np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))
    write_series(tmp_path / "d")
    centroids = np.array([marker_centroid(load_ct(p)) for p in find_ct_inputs([tmp_path])])
    assert centroids.shape == (4, 3)
    assert np.abs(centroids - MARKER_RAS).max() < 3.0


def test_info_is_non_identifying(tmp_path: Path) -> None:
    write_series(tmp_path / "s")
    vol = load_ct(tmp_path / "s")
    text = repr(vol.info)
    for secret in ("Doe", "PID-12345", "20240131", "General Hospital", "1.2.3.4"):
        assert secret not in text
    assert vol.info["modality"] == "CT" and vol.info["convolution_kernel"] == "B30f"
    assert vol.info["manufacturer"] == "Phantom Inc"

# ------------------------------------------------------------------------------------- bad paths


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path)
    one_line(err, tmp_path, "no DICOM files found in folder")


def test_path_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path / "nope.nii.gz")
    one_line(err, tmp_path / "nope.nii.gz", "path does not exist")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "ct.nii.gz").touch()
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path / "ct.nii.gz")
    one_line(err, tmp_path / "ct.nii.gz", "zero-byte file")


def test_unsupported_file_type(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path / "x.txt")
    expected = "(expected .nii, .nii.gz, .nrrd, .mha, .mhd or a DICOM folder)"
    one_line(err, tmp_path / "x.txt", "unsupported file type '.txt'", expected)


def test_corrupt_nifti_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path / "bad.nii.gz")
    one_line(err, tmp_path / "bad.nii.gz", "cannot read:")


# ------------------------------------------------------------------------------------ label maps


def test_label_map_on_same_grid_in_another_orientation(tmp_path: Path) -> None:
    data, affine = write_nifti(tmp_path / "ct.nii.gz")
    lungs = (data == -850).astype(np.uint8) * 12
    canon = nib.as_closest_canonical(nib.Nifti1Image(lungs, affine))
    nib.save(canon, tmp_path / "labels.nii.gz")
    vol = load_ct(tmp_path / "ct.nii.gz", labelmap=tmp_path / "labels.nii.gz")
    assert vol.labels is not None and vol.labels.shape == vol.shape
    np.testing.assert_array_equal(vol.labels == 12, vol.hu == -850)


def test_label_map_grid_mismatch_is_refused(tmp_path: Path) -> None:
    data, affine = write_nifti(tmp_path / "ct.nii.gz")
    shifted = affine.copy()
    shifted[:3, 3] += [0.0, 0.0, 5.0]
    nib.save(nib.Nifti1Image(np.zeros(data.shape, np.uint8), shifted), tmp_path / "labels.nii.gz")
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path / "ct.nii.gz", labelmap=tmp_path / "labels.nii.gz")
    one_line(err, tmp_path / "labels.nii.gz", "label map grid", "does not match CT grid")


# ---------------------------------------------------------------------------------- plausibility


def test_phantom_is_a_plausible_chest_ct(tmp_path: Path) -> None:
    write_nifti(tmp_path / "ct.nii.gz")
    check_plausible_chest_ct(load_ct(tmp_path / "ct.nii.gz"))


def test_mr_like_intensities_are_refused(tmp_path: Path) -> None:
    data, affine = write_nifti(tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(((data + 1000) * 2).astype(np.int16), affine), tmp_path / "mr.nii.gz")
    with pytest.raises(CTInputError) as err:
        check_plausible_chest_ct(load_ct(tmp_path / "mr.nii.gz"))
    one_line(err, tmp_path / "mr.nii.gz", "no negative values", "not CT in HU")


def test_no_air_is_refused_with_measured_level(tmp_path: Path) -> None:
    data, affine = write_nifti(tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image((data // 4).astype(np.int16), affine), tmp_path / "soft.nii.gz")
    with pytest.raises(CTInputError) as err:
        check_plausible_chest_ct(load_ct(tmp_path / "soft.nii.gz"))
    one_line(err, tmp_path / "soft.nii.gz", "measured air level -250 HU")


def test_absurd_spacing_is_refused(tmp_path: Path) -> None:
    data, affine = write_nifti(tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(data, affine @ np.diag([1.0, 1.0, 4.0, 1.0])), tmp_path / "coarse.nii.gz")
    with pytest.raises(CTInputError) as err:
        check_plausible_chest_ct(load_ct(tmp_path / "coarse.nii.gz"))
    one_line(err, tmp_path / "coarse.nii.gz", "voxel spacing 9 × 40 × 11 mm is implausible for a CT")


def test_folder_of_volumes_is_not_a_dicom_folder(tmp_path: Path) -> None:
    write_nifti(tmp_path / "a.nii.gz")
    with pytest.raises(CTInputError) as err:
        load_ct(tmp_path)
    one_line(err, tmp_path, "no DICOM files found in folder (it holds 1 NIfTI/NRRD/MHA files: pass each file)")

def test_nan_voxels_are_refused(tmp_path: Path) -> None:
    data, affine = write_nifti(tmp_path / "ct.nii.gz", dtype=np.float32)
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "nan.nii.gz")
    with pytest.raises(CTInputError) as err:
        check_plausible_chest_ct(load_ct(tmp_path / "nan.nii.gz"))
    one_line(err, tmp_path / "nan.nii.gz", "1 voxels are NaN or Inf")


def test_too_few_slices_are_refused(tmp_path: Path) -> None:
    write_series(tmp_path, n=5)
    with pytest.raises(CTInputError) as err:
        check_plausible_chest_ct(load_ct(tmp_path))
    one_line(err, tmp_path, "too few slices: 5")


def test_no_lungs_are_refused(tmp_path: Path) -> None:
    write_nifti(tmp_path / "abdomen.nii.gz", lungs=False)
    with pytest.raises(CTInputError) as err:
        check_plausible_chest_ct(load_ct(tmp_path / "abdomen.nii.gz"))
    one_line(err, tmp_path / "abdomen.nii.gz", "no lungs found (lung volume 0 mL < 300 mL; is this a chest CT?)")


# ---------------------------------------------------------------------------------- find_ct_inputs


def test_find_ct_inputs_expands_folders(tmp_path: Path) -> None:
    write_series(tmp_path / "patient1" / "study" / "s1", n=8)
    write_series(tmp_path / "patient1" / "study" / "s2", n=8, series_uid="1.2.3.4.101")
    write_series(tmp_path / "patient2" / "s1", n=8, study_uid="1.2.3.4.2")
    (tmp_path / "volumes").mkdir()
    write_nifti(tmp_path / "volumes" / "b.nii.gz")
    write_itk(tmp_path / "volumes" / "a.nrrd", np.eye(3))
    (tmp_path / "volumes" / "notes.txt").write_text("ignored")
    found = find_ct_inputs([tmp_path])
    assert found == sorted(
        [tmp_path / "patient1" / "study", tmp_path / "patient2" / "s1",
         tmp_path / "volumes" / "a.nrrd", tmp_path / "volumes" / "b.nii.gz"]
    )
    # The same study given twice (and as a file) is listed once; the result is deterministic.
    again = find_ct_inputs([tmp_path / "patient1", tmp_path / "patient1" / "study", tmp_path / "volumes" / "a.nrrd"])
    assert again == [tmp_path / "patient1" / "study", tmp_path / "volumes" / "a.nrrd"]
    with pytest.raises(CTInputError) as err:
        find_ct_inputs([tmp_path / "missing"])
    one_line(err, tmp_path / "missing", "path does not exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CTInputError) as err:
        find_ct_inputs([tmp_path / "empty"])
    one_line(err, tmp_path / "empty", "no CT files found in folder")


# ------------------------------------------------------------------------------- real shared data


def _shared(*parts: str) -> Path:
    path = CT_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not available: {path}")
    return path


@pytest.mark.slow
def test_real_study_with_two_series_picks_one() -> None:
    study = _shared("lung-pet-ct-dx", "Lung_Dx-A0001", "04-04-2007-NA-Chest-07990")
    vol = load_ct(study.parent.parent)  # the patient folder: series are found recursively
    assert vol.shape == (512, 512, 64)
    np.testing.assert_allclose(vol.spacing, [0.8418, 0.8418, 5.0], atol=1e-3)
    assert vol.info["series_number"] == 2 and vol.info["convolution_kernel"] == "L"
    assert not re.search(r"\d+\.\d+\.\d+\.\d+\.\d+", repr(vol.info))  # no UIDs
    assert "2007" not in repr(vol.info)
    ml = lung_mask(vol).sum() * np.prod(vol.spacing) / 1000
    assert 2000 < ml < 8000
    soft_tissue = next((study / "3.000000-5mm-41315").glob("*.dcm"))
    uid = str(pydicom.dcmread(soft_tissue, stop_before_pixels=True).SeriesInstanceUID)
    other = load_ct(study, series_uid=uid)
    assert other.info["convolution_kernel"] == "B" and other.checksum != vol.checksum


def test_real_series_with_spaces_in_folder_names() -> None:
    patient = _shared("lung-pet-ct-dx", "Lung_Dx-A0002")
    (folder,) = find_ct_inputs([patient])
    assert "  " in folder.name
    vol = load_ct(folder)
    assert vol.shape == (512, 512, 30)
    np.testing.assert_allclose(vol.spacing[2], 8.0)
    check_plausible_chest_ct(vol)


@pytest.mark.slow
def test_real_jpeg2000_dicom_with_empty_uids_has_no_lungs() -> None:
    folder = _shared("totalsegmentator-example", "example_ct_dicom")
    vol = load_ct(folder)
    assert vol.shape[2] == 20 and "JPEG 2000" in vol.info["transfer_syntax"]
    assert -1030 < np.percentile(vol.hu, 1) < -900  # air after rescale
    with pytest.raises(CTInputError) as err:
        lung_mask(vol)
    one_line(err, folder, "no lungs found")


def test_real_abdomen_nifti_has_no_lungs() -> None:
    path = _shared("totalsegmentator-example", "example_ct.nii.gz")
    with pytest.raises(CTInputError) as err:
        check_plausible_chest_ct(load_ct(path))
    one_line(err, path, "no lungs found")


@pytest.mark.slow
def test_real_gantry_tilt_is_resampled_correctly() -> None:
    folder = _shared("dcm_qa_ct-ge-gantry-tilt", "In", "GE")
    vol = load_ct(folder)
    notes = " ".join(vol.info["corrections"])
    assert "gantry tilt 18.5°" in notes and "uneven slice spacing" in notes
    # Every original pixel must be found again at its own world position in the resampled volume.
    rng = np.random.default_rng(0)
    originals, world = [], []
    for f in sorted(folder.glob("*.dcm"))[1:27:3]:
        ds = pydicom.dcmread(f)
        pixels = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        r, c = rng.integers(120, 400, 200), rng.integers(120, 400, 200)
        ipp = np.array(ds.ImagePositionPatient, float)
        iop = np.array(ds.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        world.append(lps_to_ras(ipp + c[:, None] * dc * iop[:3] + r[:, None] * dr * iop[3:]))
        originals.append(np.maximum(pixels[r, c], -1024))
    world_pts, original = np.concatenate(world), np.concatenate(originals)
    resampled = ndimage.map_coordinates(vol.hu, vol.world_to_voxel(world_pts).T, order=1)
    assert np.corrcoef(original, resampled)[0, 1] > 0.9  # SimpleITK's sheared reading gives ≈ 0.45
    with pytest.raises(CTInputError) as err:
        lung_mask(vol)
    one_line(err, folder, "no lungs found")
