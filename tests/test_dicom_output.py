"""DICOM Secondary Capture output: round trip, reproducible bytes and UIDs, required attributes, dciodvfy-valid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from data.atomic import DatasetWriteError
from data.dicom_out import SECONDARY_CAPTURE_IMAGE_STORAGE, read_secondary_capture, write_secondary_capture

GEOMETRY = {"pixel_spacing_mm": 430.0 / 96, "sdd_mm": 1800.0, "sid_mm": 1650.0}


def radiograph(seed: int = 0, shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A uint16 test image using the full 16-bit range (0 and 65535 included), not square."""
    img = np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
    img[0, 0], img[-1, -1] = 0, 65535
    return img


def write(
    path: Path, image: np.ndarray | None = None, *, seed: str = "0:abc:0", view: str = "PA", **kw: object
) -> Path:
    """write_secondary_capture with test defaults."""
    args = {**GEOMETRY, "view": view, "description": f"DiffusionXRay synthetic {view} radiograph", **kw}
    return write_secondary_capture(path, radiograph() if image is None else image, uid_seed=seed, **args)


def test_round_trip_pixels(tmp_path: Path) -> None:
    img = radiograph()
    path = write(tmp_path / "a" / "img.dcm", img)
    out = read_secondary_capture(path)
    assert out.dtype == np.uint16 and out.shape == (96, 80)
    np.testing.assert_array_equal(out, img)
    # Any byte order / stride is accepted and stored as the same pixels.
    path2 = write(tmp_path / "b.dcm", np.asfortranarray(img).astype(">u2"))
    np.testing.assert_array_equal(read_secondary_capture(path2), img)


def test_same_seed_is_byte_identical_other_seed_has_other_uids(tmp_path: Path) -> None:
    a, b = write(tmp_path / "a.dcm"), write(tmp_path / "b.dcm")
    assert a.read_bytes() == b.read_bytes()
    c = write(tmp_path / "c.dcm", seed="0:abc:1")
    da, dc = pydicom.dcmread(a), pydicom.dcmread(c)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert da[keyword].value != dc[keyword].value, keyword
    # The three UIDs of one image differ from each other too.
    assert len({da.StudyInstanceUID, da.SeriesInstanceUID, da.SOPInstanceUID}) == 3


def test_required_attributes(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write(tmp_path / "img.dcm"))
    meta = ds.file_meta
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID == SECONDARY_CAPTURE_IMAGE_STORAGE
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian and ds.preamble == b"\0" * 128
    assert ds.ConversionType == "SYN" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.BurnedInAnnotation == "NO" and ds.PhotometricInterpretation == "MONOCHROME2"
    pixel_format = (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel)
    assert pixel_format == (16, 16, 15, 0, 1)
    assert str(ds.PatientName) == "SYNTHETIC" and ds.PatientID == "SYNTHETIC"
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
    assert not ds.get("StudyDate") and not ds.get("StudyTime") and not ds.get("PatientBirthDate")
    assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx([430.0 / 96] * 2)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([430.0 / 96] * 2)
    assert float(ds.DistanceSourceToDetector) == 1800.0 and float(ds.DistanceSourceToPatient) == 1650.0
    assert ds.ViewPosition == "PA" and list(ds.PatientOrientation) == ["L", "F"]
    assert ds.SeriesDescription == "DiffusionXRay synthetic PA radiograph"
    assert not any(elem.tag.is_private for elem in ds)


def test_alias_and_views(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write(tmp_path / "lat.dcm", view="LAT", alias="PHANTOM-07"))
    assert str(ds.PatientName) == "PHANTOM-07" and ds.PatientID == "PHANTOM-07"
    assert ds.ViewPosition == "LL" and list(ds.PatientOrientation) == ["P", "F"]
    assert pydicom.dcmread(write(tmp_path / "ap.dcm", view="AP")).ViewPosition == "AP"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"image": np.zeros((4, 4), np.float32)}, "2-D uint16"),
        ({"image": np.zeros((2, 4, 4), np.uint16)}, "2-D uint16"),
        ({"view": "OBLIQUE"}, "unknown view"),
        ({"alias": "a\\b"}, "alias"),
        ({"description": "x" * 65}, "description"),
        ({"sid_mm": 2000.0}, "sid_mm"),
    ],
)
def test_bad_arguments_are_refused_and_nothing_is_written(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    image = kwargs.pop("image", None)
    with pytest.raises(ValueError, match=fragment):
        write(tmp_path / "bad.dcm", image, **kwargs)
    assert not any(tmp_path.iterdir())


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a regular file where the output folder should be")
    with pytest.raises(DatasetWriteError):
        write(blocker / "img.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_read_refuses_other_dicom(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write(tmp_path / "img.dcm"))
    ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.save_as(tmp_path / "ct.dcm")
    with pytest.raises(ValueError, match="not a Secondary Capture"):
        read_secondary_capture(tmp_path / "ct.dcm")


@pytest.mark.parametrize(("view", "alias"), [("PA", None), ("LAT", "Synthetic^Alias")])
def test_dciodvfy_finds_no_errors(tmp_path: Path, view: str, alias: str | None) -> None:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    path = write(tmp_path / "img.dcm", view=view, alias=alias)
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    report = (run.stdout + run.stderr).splitlines()
    errors = [line for line in report if line.startswith("Error")]
    assert errors == [], "\n".join(report)
    assert "SCImage" in report  # it recognised and checked the Secondary Capture IOD
    # Only the expected warnings remain: extension attributes carrying the geometry, no study date/time (none is
    # true), and a one-component name ("SYNTHETIC", valid PN that dciodvfy calls the retired form).
    warnings = [line for line in report if line.startswith("Warning")]
    allowed = ("not present in standard DICOM IOD", "needed to build DICOMDIR - Study Date",
               "needed to build DICOMDIR - Study Time", "PN [1] = <SYNTHETIC> - Retired Person Name form")
    assert all(any(a in w for a in allowed) for w in warnings), "\n".join(warnings)


def test_generate_dicom_output_passes_dciodvfy(chest_nifti: Path, tmp_path: Path) -> None:
    """The files ``generate --dicom`` writes (not just the writer) validate, and carry the run's geometry."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "ds"
    args = ["generate", str(chest_nifti), "--out", str(out), "--size", "64", "-n", "1", "--dicom", "--no-progress",
            "--device", "cpu", "--diameter-min", "14"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (path,) = sorted((out / "dicom").glob("*.dcm"))
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    report = (run.stdout + run.stderr).splitlines()
    assert [line for line in report if line.startswith("Error")] == [], "\n".join(report)
    ds = pydicom.dcmread(path)
    assert ds.ConversionType == "SYN" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.Rows == ds.Columns == 64
