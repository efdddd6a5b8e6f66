"""De-identification: identifying values in an input DICOM CT never reach any output byte (files or CLI output).

The input is the conftest chest phantom written as a DICOM series that carries distinctive values in every
identifying attribute of DICOM PS3.15 Annex E's basic profile that a CT export typically holds, plus a private tag.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import chest_phantom_hu
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from typer.testing import CliRunner

from pipeline.cli import app

# Distinctive values (UIDs under 2.25, not the pydicom root our own output UIDs use).
PHI: dict[str, str] = {
    "PatientName": "Zyxwvut^Quintessa^Marigold",
    "PatientID": "PID-ZQ-90417",
    "PatientBirthDate": "19370412",
    "AccessionNumber": "ACC77123X",
    "InstitutionName": "Saint Elsewhere Xylophone Hospital",
    "ReferringPhysicianName": "Quackenbush^Horatio",
    "StudyDate": "20190823",
    "StudyInstanceUID": "2.25.271828182845904523536028747135266249",
    "SeriesInstanceUID": "2.25.314159265358979323846264338327950288",
    "SeriesDescription": "Secret Series Mauve Otter",
    "StudyDescription": "Secret Study Velvet Heron",
    "OperatorsName": "Operatorsky^Bartholomew",
}
SOP_ROOT = "2.25.161803398874989484820458683436563811"  # + ".<k>" per slice
PRIVATE_CREATOR = "PHI TEST CREATOR"
PRIVATE_VALUE = "PRIVATE-SECRET-31415"


def write_phantom_dicom(folder: Path, tags: dict[str, str] | None = None, sop_root: str = SOP_ROOT) -> Path:
    """Write the conftest chest phantom as an axial CT series (one file per slice) with the given header values.

    Geometry matches ``write_chest_phantom``: 4 × 4 × 6 mm voxels, column index → patient's left, row index →
    posterior, so both load to the same RAS grid.
    """
    folder.mkdir(parents=True, exist_ok=True)
    hu = chest_phantom_hu()
    nx, ny, nz = hu.shape
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{sop_root}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.Manufacturer = "Phantom Inc"
        ds.ConvolutionKernel = "B30f"
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        for keyword, value in (tags or {}).items():
            setattr(ds, keyword, value)
        block = ds.private_block(0x0011, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", PRIVATE_VALUE)
        ds.ImagePositionPatient = [-140.0, -110.0, -130.0 + 6.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [4.0, 4.0]
        ds.SliceThickness = 6.0
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        stored = np.clip(np.rint(hu[:, :, k].T + 1024), 0, 65535).astype(np.uint16)  # rows = j, columns = i
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return folder


def _needles(values: list[str]) -> dict[str, list[bytes]]:
    """Byte patterns to look for: each value (and each PN component, each date form) as ASCII, UTF-16 LE/BE."""
    needles: dict[str, list[bytes]] = {}
    for value in values:
        forms = {value}
        if "^" in value:
            forms |= {part for part in value.split("^") if len(part) >= 5}
        if len(value) == 8 and value.isdigit():  # a DA date: also YYYY-MM-DD and YYYY/MM/DD
            forms |= {f"{value[:4]}-{value[4:6]}-{value[6:]}", f"{value[:4]}/{value[4:6]}/{value[6:]}"}
        needles[value] = [
            pattern
            for form in sorted(forms)
            for pattern in (form.encode(), form.encode("utf-16-le"), form.encode("utf-16-be"))
        ]
    return needles


def leaks(out: Path, cli_output: str, values: list[str]) -> list[str]:
    """'value in file' for every identifying value found in any output file (recursively) or the CLI output."""
    found = []
    blobs = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    blobs["<cli output>"] = cli_output.encode("utf-8")
    for value, patterns in _needles(values).items():
        for name, blob in blobs.items():
            low = blob.lower()
            if any(p in blob or p.lower() in low for p in patterns):
                found.append(f"{value!r} in {name}")
    return found


def _identifying_values() -> list[str]:
    return [*PHI.values(), PRIVATE_VALUE, PRIVATE_CREATOR, *(f"{SOP_ROOT}.{k + 1}" for k in range(44))]


@pytest.fixture(scope="module")
def phi_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom as a DICOM series full of identifying values (in a neutrally named folder)."""
    return write_phantom_dicom(tmp_path_factory.mktemp("phi") / "input" / "series", PHI)


def test_phantom_series_carries_the_identifiers(phi_series: Path) -> None:
    ds = pydicom.dcmread(next(phi_series.glob("*.dcm")))
    assert str(ds.PatientName) == PHI["PatientName"] and ds.StudyDate == PHI["StudyDate"]
    assert ds[0x0011, 0x1001].value == PRIVATE_VALUE  # the private block really got written


def test_ingest_info_has_no_identifiers(phi_series: Path) -> None:
    from ct_projection.ingest import load_ct

    vol = load_ct(phi_series)
    text = json.dumps(vol.info, default=str)
    for value in _identifying_values():
        assert value not in text, value
    assert "series_description" not in vol.info and vol.info["convolution_kernel"] == "B30f"


def test_generate_outputs_carry_no_identifiers(phi_series: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["generate", str(phi_series), "--out", str(out), "--no-progress", "--size", "64", "-n", "2", "--dicom"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".dcm"]) == 2
    assert {p.suffix for p in files} >= {".png", ".json", ".csv", ".yaml", ".jsonl", ".txt", ".dcm"}
    assert leaks(out, result.output, _identifying_values()) == []
    for dcm in out.rglob("*.dcm"):
        ds = pydicom.dcmread(dcm)
        assert str(ds.PatientName) == "SYNTHETIC" and ds.PatientID == "SYNTHETIC"
        assert ds.PatientIdentityRemoved == "YES" and not ds.get("StudyDate")
        assert not any(elem.tag.is_private for elem in ds)
    info = json.loads((out / "dataset.json").read_text())
    assert "series_description" not in json.dumps(info)


def test_series_listing_names_no_uids_or_descriptions(phi_series: Path, tmp_path: Path) -> None:
    """A --series-uid miss lists series by number, modality, slices and thickness: no UIDs, no free text (Annex E)."""
    other = write_phantom_dicom(
        tmp_path / "input2" / "series",
        {**PHI, "StudyInstanceUID": "2.25.1000001", "SeriesInstanceUID": "2.25.1000002"},
        sop_root="2.25.1000003",
    )
    out = tmp_path / "out"
    args = ["generate", str(phi_series), str(other), "--out", str(out), "--no-progress", "--size", "64", "-n", "1",
            "--series-uid", "2.25.1000002"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not found (available: series 2 (CT, 44 slices, 6 mm))" in errors[0], errors
    assert PHI["SeriesDescription"] not in result.output and PHI["SeriesInstanceUID"] not in result.output
    assert PHI["StudyInstanceUID"] not in result.output
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    leaked = leaks(out, "", [*_identifying_values(), "2.25.1000001", "2.25.1000002", "2.25.1000003"])
    assert leaked == []  # the selector UID is kept only as a hash in config.json / dataset.json


def test_series_uid_accepts_a_series_number(phi_series: Path, tmp_path: Path) -> None:
    """Two series in one folder: pick one by the SeriesNumber the error message lists."""
    import shutil

    from ct_projection.ingest import load_ct
    from ct_projection.volume import CTInputError

    folder = tmp_path / "study"
    shutil.copytree(phi_series, folder / "a")
    write_phantom_dicom(
        folder / "b", {**PHI, "SeriesInstanceUID": "2.25.2000002", "SeriesNumber": "5"}, sop_root="2.25.2000003"
    )
    assert load_ct(folder).info["series_number"] == 2  # default: equal slice counts, lowest number
    assert load_ct(folder, series_uid="5").info["series_number"] == 5
    assert load_ct(folder, series_uid="2.25.2000002").info["series_number"] == 5  # a UID still works
    with pytest.raises(CTInputError) as err:
        load_ct(folder, series_uid="7")
    message = str(err.value)
    assert "'7' not found (available: series 2 (CT, 44 slices, 6 mm); series 5 (CT, 44 slices, 6 mm))" in message
    assert "2.25." not in message.replace("'7'", "") and PHI["SeriesDescription"] not in message


def test_phi_in_the_input_path_stays_out_of_outputs_and_stderr(phi_series: Path, tmp_path: Path) -> None:
    """An input folder named after the patient: a successful run names it nowhere (files, stdout or stderr)."""
    import shutil

    folder = tmp_path / "in" / "Quintessa_Zyxwvut_PID-ZQ-90417"
    shutil.copytree(phi_series, folder)
    out = tmp_path / "out"
    args = ["generate", str(folder), "--out", str(out), "--no-progress", "--size", "64", "-n", "1"]
    result = CliRunner().invoke(app, args)  # result.output holds stderr too
    assert result.exit_code == 0, result.output
    assert "wrote 1 images" in result.output
    assert leaks(out, result.output, ["Quintessa_Zyxwvut_PID-ZQ-90417", "Quintessa", "PID-ZQ-90417"]) == []


def test_leak_scanner_finds_planted_values(tmp_path: Path) -> None:
    """Negative control: the scanner sees ASCII, UTF-16, reformatted dates and name components."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.json").write_text('{"when": "2019-08-23"}')
    (tmp_path / "y.bin").write_bytes(b"\0\1" + "Quintessa".encode("utf-16-le") + b"\2")
    found = leaks(tmp_path, "PID-ZQ-90417", [PHI["StudyDate"], PHI["PatientName"], PHI["PatientID"], "absent-value"])
    assert found == [
        "'20190823' in a/x.json",
        "'Zyxwvut^Quintessa^Marigold' in y.bin",
        "'PID-ZQ-90417' in <cli output>",
    ]
