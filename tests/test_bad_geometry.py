"""Degenerate or sheared CT geometry, and header text copied into outputs.

Every input is built here from the conftest chest phantom: pydicom-written slices, nibabel NIfTI, SimpleITK
NRRD/MetaImage with their headers edited the way broken exports are. A degenerate grid must give one line naming
the file (the slice, for DICOM) and the problem — through ``load_ct`` and through the CLI (non-zero exit, no
traceback, no output folder) — never a linear-algebra error or ITK's dump; a sheared grid must be resampled onto
orthogonal axes with every voxel where its world position says; metadata text must reach dataset.json cleaned.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import chest_phantom_hu, write_chest_phantom
from ingest_phantom import linear_field, voxel_world
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from ct_projection.ingest import find_ct_inputs, load_ct
from ct_projection.volume import CTInputError, CTVolume, clean_info
from pipeline.cli import app

SPACING = (4.0, 4.0, 6.0)  # column (i), row (j), slice mm, as in conftest.write_chest_phantom
ORIGIN_LPS = np.array([-140.0, -110.0, -130.0])

# ------------------------------------------------------------------------------------------- builders


def write_dicom_chest(
    folder: Path,
    edit: Callable[[int, Dataset], None] | None = None,
    *,
    preamble: bool = True,
    suffix: str = ".dcm",
) -> Path:
    """The conftest phantom as an axial CT series, one file per slice; ``edit(k, ds)`` alters slice k's header."""
    folder.mkdir(parents=True, exist_ok=True)
    hu = chest_phantom_hu()
    nx, ny, nz = hu.shape
    series_uid = generate_uid()
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice{k:03d}{suffix}"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.Manufacturer = "Phantom Inc"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [*ORIGIN_LPS[:2], ORIGIN_LPS[2] + SPACING[2] * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.clip(np.rint(hu[:, :, k].T + 1024), 0, 65535).astype(np.uint16).tobytes()
        if edit is not None:
            edit(k, ds)
        if preamble:
            ds.save_as(path, enforce_file_format=True)
        else:
            ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return folder


def on_slice(index: int, **values: object) -> Callable[[int, Dataset], None]:
    """An ``edit`` that sets header values on one slice."""

    def edit(k: int, ds: Dataset) -> None:
        if k == index:
            for keyword, value in values.items():
                setattr(ds, keyword, value)

    return edit


def on_every_slice(**values: object) -> Callable[[int, Dataset], None]:
    def edit(k: int, ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return edit


def write_itk(path: Path, *, compress: bool = False) -> Path:
    """The phantom as NRRD/MetaImage through SimpleITK (LPS: index i → patient's left, as in the DICOM series)."""
    hu = np.rint(chest_phantom_hu()).astype(np.int16)
    img = sitk.GetImageFromArray(hu.transpose(2, 1, 0))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN_LPS.tolist())
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(compress)
    writer.Execute(img)
    return path


def edit_header(path: Path, old: str, new: str) -> Path:
    """Replace one text line of an NRRD/MetaImage header in place (the binary data is left as it is)."""
    raw = path.read_bytes()
    assert old.encode() in raw[:4096], raw[:600]
    path.write_bytes(raw.replace(old.encode(), new.encode(), 1))
    return path


def _iop_zero_one_slice(root: Path) -> Path:
    return write_dicom_chest(root / "dicom", on_slice(7, ImageOrientationPatient=[0.0] * 6))


def _iop_zero_every_slice(root: Path) -> Path:
    return write_dicom_chest(root / "dicom", on_every_slice(ImageOrientationPatient=[0.0] * 6))


def _ipp_nan_one_slice(root: Path) -> Path:
    with warnings.catch_warnings():  # pydicom warns that 'nan' is not a valid DS value, and writes it
        warnings.simplefilter("ignore")
        return write_dicom_chest(root / "dicom", on_slice(20, ImagePositionPatient=["nan", -110.0, -10.0]))


def _pixel_spacing_zero(root: Path) -> Path:
    return write_dicom_chest(root / "dicom", on_every_slice(PixelSpacing=[0.0, 0.0]))


def _odd_orientation_last_slice(root: Path) -> Path:
    c, s = math.cos(math.radians(5)), math.sin(math.radians(5))
    return write_dicom_chest(root / "dicom", on_slice(43, ImageOrientationPatient=[c, s, 0.0, -s, c, 0.0]))


def _skewed_pixel_grid(root: Path) -> Path:
    # Row and column directions 80° apart: an in-plane shear no DICOM image may have.
    c, s = math.cos(math.radians(80)), math.sin(math.radians(80))
    return write_dicom_chest(root / "dicom", on_every_slice(ImageOrientationPatient=[1.0, 0.0, 0.0, c, s, 0.0]))


def _negative_spacing_last_slice(root: Path) -> Path:
    return write_dicom_chest(root / "dicom", on_slice(43, PixelSpacing=[-4.0, 4.0]))


def _zero_rows_last_slice(root: Path) -> Path:
    return write_dicom_chest(root / "dicom", on_slice(43, Rows=0))


def _nifti_nan_affine(root: Path) -> Path:
    path = write_chest_phantom(root / "nan affine.nii.gz")
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[1, 3] = np.nan
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine), str(path))
    return path


def _mhd_missing_data(root: Path) -> Path:
    path = write_itk(root / "chest.mhd")
    (root / "chest.raw").unlink()
    return path


def _mha_truncated(root: Path) -> Path:
    path = write_itk(root / "chest.mha")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    return path


def _mha_zero_spacing(root: Path) -> Path:
    return edit_header(write_itk(root / "chest.mha"), "ElementSpacing = 4 4 6", "ElementSpacing = 0 4 6")


def _mha_zero_size(root: Path) -> Path:
    return edit_header(write_itk(root / "chest.mha"), "DimSize = 72 56 44", "DimSize = 72 56 0")


def _mha_nan_origin(root: Path) -> Path:
    return edit_header(write_itk(root / "chest.mha"), "Offset = -140 -110 -130", "Offset = -140 nan -130")


def _nrrd_truncated(root: Path) -> Path:
    path = write_itk(root / "chest.nrrd")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _nrrd_nan_spacing(root: Path) -> Path:
    return edit_header(write_itk(root / "chest.nrrd"), "(4,0,0) (0,4,0)", "(nan,0,0) (0,4,0)")


def _nrrd_parallel_axes(root: Path) -> Path:
    return edit_header(write_itk(root / "chest.nrrd"), "(4,0,0) (0,4,0)", "(4,0,0) (4,0,0)")


def _nhdr_missing_data(root: Path) -> Path:
    nrrd = write_itk(root / "chest.nrrd")
    raw = nrrd.read_bytes()
    split = raw.index(b"\n\n")
    (root / "chest.nhdr").write_bytes(raw[:split] + b"\ndata file: chest.raw\n\n")
    nrrd.unlink()
    return root / "chest.nhdr"


# case → (builder, the phrase its one-line message must contain, the DICOM slice it must name)
CASES: dict[str, tuple[Callable[[Path], Path], str, str | None]] = {
    "dicom-iop-zero-one-slice": (_iop_zero_one_slice, "has a zero direction vector", "slice007.dcm"),
    "dicom-iop-zero-every-slice": (_iop_zero_every_slice, "has a zero direction vector", "slice000.dcm"),
    "dicom-ipp-nan-one-slice": (_ipp_nan_one_slice, "is not a finite position", "slice020.dcm"),
    "dicom-pixel-spacing-zero": (_pixel_spacing_zero, "PixelSpacing 0\\0 mm", "slice000.dcm"),
    "dicom-odd-orientation": (_odd_orientation_last_slice, "does not fit the stack is refused", "slice043.dcm"),
    "dicom-skewed-pixel-grid": (_skewed_pixel_grid, "80.00° apart, not 90°", "slice000.dcm"),
    "dicom-negative-spacing": (_negative_spacing_last_slice, "both spacings must be positive", "slice043.dcm"),
    "mha-zero-size": (_mha_zero_size, "expected a 3D volume, got shape (72, 56, 0)", None),
    "mha-nan-origin": (_mha_nan_origin, "header field 'offset' = '-140 nan -130' is not all finite numbers", None),
    "nrrd-truncated": (_nrrd_truncated, "file is truncated: its voxel data has", None),
    "dicom-zero-rows": (_zero_rows_last_slice, "Rows × Columns is 0 × 72: an image without pixels", "slice043.dcm"),
    "nifti-nan-affine": (_nifti_nan_affine, "holds NaN or Inf in its origin", None),
    "mhd-missing-data": (_mhd_missing_data, "data file 'chest.raw' named by the header is missing", None),
    "mha-truncated": (_mha_truncated, "file is truncated: its voxel data has", None),
    "mha-zero-spacing": (_mha_zero_spacing, "voxel spacing 0 × 4 × 6 mm", None),
    "nrrd-nan-spacing": (_nrrd_nan_spacing, "header field 'space directions' = '(nan,0,0) (0,4,0)", None),
    "nrrd-parallel-axes": (_nrrd_parallel_axes, "parallel voxel axes", None),
    "nhdr-missing-data": (_nhdr_missing_data, "data file 'chest.raw' named by the header is missing", None),
}
_built: dict[str, Path] = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("geometry")

    def build(case: str) -> Path:
        if case not in _built:
            folder = root / case
            folder.mkdir()
            _built[case] = CASES[case][0](folder)
        return _built[case]

    return build


def assert_one_clear_line(message: str, path: Path, case: str) -> None:
    _, phrase, slice_name = CASES[case]
    assert "\n" not in message and str(path) in message and phrase in message, message
    if slice_name is not None:
        assert slice_name in message, message
    for noise in ("LinAlgError", "SVD", "0x", "itk", "ITK", ".cxx", "[nrrd]", "Traceback"):
        assert noise not in message, message


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_degenerate_geometry_is_one_line_naming_the_file(case: str, corpus: Callable[[str], Path]) -> None:
    path = corpus(case)
    with pytest.raises(CTInputError) as err:
        load_ct(path)
    assert_one_clear_line(str(err.value), path, case)


def test_one_broken_dicom_file_given_alone_is_named(corpus: Callable[[str], Path]) -> None:
    path = corpus("dicom-iop-zero-one-slice") / "slice007.dcm"
    with pytest.raises(CTInputError) as err:
        load_ct(path)
    zero = "\\".join("0" * 6)
    assert str(err.value) == f"{path}: slice007.dcm: ImageOrientationPatient {zero} has a zero direction vector"
    sibling = corpus("dicom-iop-zero-one-slice") / "slice006.dcm"
    with pytest.raises(CTInputError, match="slice007.dcm: .* series 2 is refused"):  # its series, not half of it
        load_ct(sibling)


def test_a_larger_broken_series_is_not_passed_over_for_a_smaller_good_one(tmp_path: Path) -> None:
    folder = write_dicom_chest(tmp_path / "ct", on_every_slice(ImageOrientationPatient=[0.0] * 6))
    scout = pydicom.dcmread(folder / "slice000.dcm")
    scout.SeriesInstanceUID, scout.SeriesNumber = generate_uid(), 1
    scout.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    scout.save_as(folder / "scout.dcm")  # the one valid image: choosing it would hide what is wrong
    with pytest.raises(CTInputError) as err:
        load_ct(folder)
    assert "slice000.dcm: ImageOrientationPatient" in str(err.value) and "and 43 more image(s)" in str(err.value)


def run_cli(paths: list[Path], out: Path):  # noqa: ANN201 - click.testing.Result
    args = ["generate", *(str(p) for p in paths), "--out", str(out), "--no-progress", "--size", "64", "-n", "1"]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_refuses_degenerate_geometry_cleanly(case: str, corpus: Callable[[str], Path], tmp_path: Path) -> None:
    path = corpus(case)
    out = tmp_path / "out"
    result = run_cli([path], out)
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert_one_clear_line(errors[0], path, case)
    assert not out.exists(), sorted(out.rglob("*"))  # nothing written: the folder the run made is gone again


def test_degenerate_cts_do_not_stop_the_good_one(corpus: Callable[[str], Path], tmp_path: Path) -> None:
    """One run over every degenerate input plus a good phantom: one error line each, the good CT completes."""
    bad = {case: corpus(case) for case in sorted(CASES)}
    good = write_chest_phantom(tmp_path / "good.nii.gz")
    out = tmp_path / "out"
    result = run_cli([*bad.values(), good], out)
    assert result.exit_code == 0 and result.exception is None and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad), result.output
    for case, path in bad.items():
        (line,) = [e for e in errors if e.startswith(f"error: {path}: ")]
        assert_one_clear_line(line.removeprefix("error: "), path, case)
    assert len(json.loads((out / "dataset.json").read_text())["sources"]) == 1


# ------------------------------------------------------------------------------- sheared grids


SHEARED_RAS = np.array(
    [[6.0, 2.5, 0.0, -90.0], [0.0, 5.0, 0.0, -80.0], [0.0, 1.5, 7.0, -100.0], [0.0, 0.0, 0.0, 1.0]]
)  # column j leans 27° off the anterior axis: a sheared grid
SHEARED_SHAPE = (30, 26, 22)


def assert_resampled_exactly(vol: CTVolume, note: str = "sheared grid") -> None:
    """Orthogonal, axis-aligned grid; every voxel inside the source holds the field at its own world position."""
    a = vol.affine[:3, :3]
    assert np.abs(a - np.diag(np.diag(a))).max() < 1e-9 and (np.diag(a) > 0).all(), vol.affine
    inside = vol.hu > -1024  # outside the sheared source box is air
    assert inside.mean() > 0.5
    expected = linear_field(voxel_world(vol.affine, vol.shape))
    assert np.abs(vol.hu - expected)[inside].max() < 0.05
    assert any(note in c for c in vol.info["corrections"]), vol.info["corrections"]


def test_sheared_nifti_is_resampled_not_read_as_orthogonal(tmp_path: Path) -> None:
    data = linear_field(voxel_world(SHEARED_RAS, SHEARED_SHAPE)).astype(np.float32)
    path = tmp_path / "sheared.nii.gz"
    img = nib.Nifti1Image(data, SHEARED_RAS)
    img.set_sform(SHEARED_RAS, code=1)
    nib.save(img, str(path))
    vol = load_ct(path)
    assert_resampled_exactly(vol)
    assert np.allclose(vol.spacing, np.linalg.norm(SHEARED_RAS[:3, :3], axis=0))


def test_sheared_metaimage_is_resampled(tmp_path: Path) -> None:
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ SHEARED_RAS
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    data = linear_field(voxel_world(SHEARED_RAS, SHEARED_SHAPE)).astype(np.float32)
    img = sitk.GetImageFromArray(data.transpose(2, 1, 0))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((affine_lps[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(affine_lps[:3, 3].tolist())
    sitk.WriteImage(img, str(tmp_path / "sheared.mha"))
    assert_resampled_exactly(load_ct(tmp_path / "sheared.mha"))


def test_sheared_label_map_follows_its_sheared_ct(tmp_path: Path) -> None:
    data = linear_field(voxel_world(SHEARED_RAS, SHEARED_SHAPE)).astype(np.float32)
    labels = np.zeros(SHEARED_SHAPE, np.int16)
    labels[10:20, 8:18, 6:16] = 12
    nib.save(nib.Nifti1Image(data, SHEARED_RAS), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(labels, SHEARED_RAS), str(tmp_path / "labels.nii.gz"))
    vol = load_ct(tmp_path / "ct.nii.gz", labelmap=tmp_path / "labels.nii.gz")
    assert vol.labels is not None and vol.labels.shape == vol.shape
    assert set(np.unique(vol.labels)) == {0, 12}
    # Every labelled voxel lies, in world space, inside the source block the labels were painted on.
    ijk = np.argwhere(vol.labels == 12).astype(np.float64)
    world = ijk @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    src = (world - SHEARED_RAS[:3, 3]) @ np.linalg.inv(SHEARED_RAS[:3, :3]).T
    assert (src > [9.5, 7.5, 5.5]).all() and (src < [19.5, 17.5, 15.5]).all()


def test_nearly_orthogonal_float_noise_is_not_resampled(tmp_path: Path) -> None:
    affine = np.diag([4.0, 4.0, 6.0, 1.0])
    affine[0, 1] = 1e-6  # float32 round-off in a real sform
    nib.save(nib.Nifti1Image(np.rint(chest_phantom_hu()).astype(np.int16), affine), str(tmp_path / "ct.nii.gz"))
    vol = load_ct(tmp_path / "ct.nii.gz")
    assert vol.shape == (72, 56, 44) and not any("resampled" in c for c in vol.info["corrections"])


# ----------------------------------------------------------------------------- DICOM odds and ends


def test_preamble_less_dicom_without_suffix_still_reads(tmp_path: Path) -> None:
    with_marker = load_ct(write_dicom_chest(tmp_path / "part10"))
    bare = write_dicom_chest(tmp_path / "bare", preamble=False, suffix="")
    assert pydicom.misc.is_dicom(next((tmp_path / "part10").iterdir()))
    assert not pydicom.misc.is_dicom(next(bare.iterdir()))
    assert find_ct_inputs([tmp_path / "bare"]) == [bare]
    vol = load_ct(bare)
    assert np.array_equal(vol.hu, with_marker.hu) and np.allclose(vol.affine, with_marker.affine)


def test_orientation_noise_within_a_series_is_not_a_stray_slice(tmp_path: Path) -> None:
    # Scanners write direction cosines with a few decimals: 1e-5 differences are one orientation, not two.
    folder = write_dicom_chest(tmp_path, on_slice(43, ImageOrientationPatient=[1.0, 1e-5, 0.0, -1e-5, 1.0, 0.0]))
    assert load_ct(folder).shape == (72, 56, 44)


def test_reformat_in_another_series_is_not_a_stray_slice(tmp_path: Path) -> None:
    folder = write_dicom_chest(tmp_path)
    coronal = pydicom.dcmread(folder / "slice000.dcm")
    coronal.SeriesInstanceUID = generate_uid()
    coronal.SeriesNumber = 3
    coronal.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    coronal.save_as(folder / "coronal.dcm")
    vol = load_ct(folder)
    assert vol.shape == (72, 56, 44) and vol.info["source_slices"] == 44


# ---------------------------------------------------------------------------- metadata in outputs


def test_info_is_cleaned_and_length_limited() -> None:
    info = clean_info(
        {
            "manufacturer": "Evil\x1b[31m Corp\r\n\u202eX\x00",
            "model": "M" * 10_000,
            "spacing": [float("nan"), 1.5, np.float32(2.0)],
            "tilt": float("inf"),
            "notes": [f"n{k}" for k in range(1000)],
            "nested": {"k\n": {"deep": "\x07bell"}},
        }
    )
    assert info["manufacturer"] == "Evil [31m Corp X"
    assert len(info["model"]) == 256 and info["model"].endswith("…")
    assert info["spacing"] == [None, 1.5, 2.0] and info["tilt"] is None
    assert len(info["notes"]) == 64
    assert info["nested"] == {"k": {"deep": "bell"}}
    json.dumps(info, allow_nan=False)


@pytest.mark.slow
def test_hostile_header_text_reaches_dataset_json_cleaned(tmp_path: Path) -> None:
    hostile = {
        "SpecificCharacterSet": "ISO_IR 192",  # UTF-8, so the right-to-left override below is stored as it is
        "Manufacturer": "Acme\x1b]0;pwned\x07 Medical" + "\u202e" + "Z" * 500,
        "ManufacturerModelName": "Scan\tner\r\nInjected: line" + "\x00" * 3,
        "ConvolutionKernel": "B30f\x0b",
        "BodyPartExamined": "CHEST\x1b[2J",
    }
    with warnings.catch_warnings():  # pydicom may warn that these values break their VR's rules; it writes them
        warnings.simplefilter("ignore")
        folder = write_dicom_chest(tmp_path / "ct", on_every_slice(**hostile))
    out = tmp_path / "out"
    result = run_cli([folder], out)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "dataset.json").read_text())["sources"][0]["info"]
    for key in ("manufacturer", "model", "convolution_kernel", "body_part"):
        value = info[key]
        assert len(value) <= 64 and value.isprintable() and "\x1b" not in value, (key, value)
    assert info["manufacturer"].startswith("Acme ]0;pwned Medical Z") and info["manufacturer"].endswith("…")
    assert info["model"] == "Scan ner Injected: line"
    assert info["body_part"] == "CHEST [2J"
