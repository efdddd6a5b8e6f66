"""``generate`` and ``convert`` restore with the packaged model by default (a tiny random one stands in for it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from restorer import save_tiny_restorer, use_as_packaged

ARGS = ["--size", "48", "-n", "2", "--seed", "4", "--no-progress", "--device", "cpu", "--diameter-min", "15"]


def files(root: Path) -> dict[str, str]:
    """sha256 of every dataset file (the tool's lock/pid bookkeeping left out)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".diffusionxray.")
    }


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in packaged model: 48 px LQ -> 96 px."""
    return save_tiny_restorer(tmp_path_factory.mktemp("packaged"), lq_size=48)


@pytest.fixture(scope="module")
def enhanced(model: Path, chest_nifti: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A default ``generate`` run (with --dicom) on an install whose packaged model is ``model``."""
    out = tmp_path_factory.mktemp("enhanced") / "ds"
    with pytest.MonkeyPatch.context() as mp:
        use_as_packaged(mp, model)
        result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(out), *ARGS, "--dicom"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_generate_enhances_by_default_and_scales_every_label(enhanced: tuple[Path, str], model: Path) -> None:
    from data.coco import read_coco
    from data.images import read_png16
    from data.records import bbox_from_mask
    from pipeline.enhancer import PACKAGED_MODEL, model_digest

    out, output = enhanced
    assert f"enhance={PACKAGED_MODEL}" in output
    records = read_coco(out / "annotations" / "coco.json")
    assert len(records) == 2 and sum(len(r.nodules) for r in records) > 0
    for rec in records:
        attrs = rec.attributes
        assert (rec.width, rec.height) == (96, 96) and read_png16(out / rec.file_name).shape == (96, 96)
        assert read_png16(out / attrs["nodule_free_file"]).shape == (96, 96)
        assert attrs["drr_file"].startswith("images_drr/") and read_png16(out / attrs["drr_file"]).shape == (48, 48)
        assert read_png16(out / attrs["drr_nodule_free_file"]).shape == (48, 48)
        for nod in rec.nodules:
            x, y, w, h = nod.bbox_xywh
            assert [x, y, w, h] == [2 * v for v in nod.attributes["drr_bbox_xywh"]]
            assert nod.footprint.shape == (96, 96) and nod.footprint.sum() == 4 * nod.attributes["footprint_px"]
            fx, fy, fw, fh = bbox_from_mask(nod.footprint)  # the box holds the footprint on the enhanced grid
            assert x <= fx and y <= fy and fx + fw <= x + w and fy + fh <= y + h
    config = json.loads((out / "config.json").read_text())["enhance"]
    assert config["model_dir"] == PACKAGED_MODEL  # not the install path: the same on every machine
    assert config["weights_sha256"] == model_digest(model) and config["input_size"] == 48
    assert config["steps"] >= 1 and config["scheduler"] and 0 < config["strength"] <= 1


def test_detector_yolo_csv_and_dicom_follow_the_enhanced_image(enhanced: tuple[Path, str]) -> None:
    import csv

    import pydicom
    from PIL import Image

    from data.coco import read_coco
    from data.images import read_png16

    out, _ = enhanced
    for rec in read_coco(out / "annotations" / "coco.json"):
        stem = Path(rec.file_name).stem
        with Image.open(out / rec.attributes["detector_file"]) as det:
            assert det.size == (96, 96) and det.mode == "L"
        rows = [line.split() for line in (out / "labels" / f"{stem}.txt").read_text().splitlines()]
        boxed = [n for n in rec.nodules if not n.attributes.get("faint")]
        assert len(rows) == len(boxed)
        for row, nod in zip(rows, boxed):
            x, y, w, h = nod.bbox_xywh
            assert np.allclose([float(v) for v in row[1:]], [(x + w / 2) / 96, (y + h / 2) / 96, w / 96, h / 96], atol=1e-5)
        ds = pydicom.dcmread(out / "dicom" / f"{stem}.dcm")
        assert np.array_equal(ds.pixel_array, read_png16(out / rec.file_name))
        drr_spacing = rec.attributes["pixel_spacing_mm"] * 2
        assert float(ds.PixelSpacing[0]) == pytest.approx(rec.attributes["pixel_spacing_mm"])
        assert drr_spacing == pytest.approx(430.0 / 48, rel=1e-6)  # default 430 mm detector rendered at 48 px
    with open(out / "metadata.csv", newline="") as fh:
        widths = [float(r["width"]) for r in csv.DictReader(fh)]
    coco_widths = [n.bbox_xywh[2] for r in read_coco(out / "annotations" / "coco.json") for n in r.nodules]
    assert widths and np.allclose(sorted(widths), sorted(coco_widths), atol=0.01)


def test_same_seed_same_bytes_resume_and_another_model_is_refused(
    enhanced: tuple[Path, str], model: Path, chest_nifti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = enhanced
    use_as_packaged(monkeypatch, model)
    again = tmp_path / "again"
    result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(again), *ARGS, "--dicom"])
    assert result.exit_code == 0, result.output
    assert files(again) == files(first)  # restoration seeded from each sample's own stream
    lost = sorted((again / "images").iterdir())[1]
    lost.unlink()  # a torn run: that sample alone is redone, restored with its own seed to the same bytes
    result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(again), *ARGS, "--dicom"])
    assert result.exit_code == 0 and "resumed: 1 finished images" in result.output
    before = files(again)
    redone = {k: v for k, v in before.items() if k != "manifest.jsonl"}  # appended to, so its line order differs
    assert redone == {k: v for k, v in files(first).items() if k != "manifest.jsonl"}
    use_as_packaged(monkeypatch, save_tiny_restorer(tmp_path / "other", lq_size=48, seed=1))  # an upgraded install
    result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(again), *ARGS, "--dicom"])
    assert result.exit_code == 1 and "different settings" in result.output
    assert len(result.output.strip().splitlines()) == 2  # the run line, then one error line
    assert files(again) == before


def test_no_enhance_and_an_install_without_the_model_write_raw_drrs(
    model: Path, chest_nifti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from data.coco import read_coco

    use_as_packaged(monkeypatch, model)
    result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(tmp_path / "raw"), *ARGS, "--no-enhance"])
    assert result.exit_code == 0 and "restoration model" not in result.output and "enhance=off" in result.output
    (rec, _) = read_coco(tmp_path / "raw" / "annotations" / "coco.json")
    assert (rec.width, rec.height) == (48, 48) and not (tmp_path / "raw" / "images_drr").exists()
    assert json.loads((tmp_path / "raw" / "config.json").read_text())["enhance"] is None
    use_as_packaged(monkeypatch, None)
    result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(tmp_path / "none"), *ARGS])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "restoration model" in line]
    assert len(notes) == 1 and notes[0].startswith("note: no packaged restoration model")
    assert files(tmp_path / "none") == files(tmp_path / "raw")  # the same raw dataset, byte for byte


def test_enhance_path_and_config_file_choose_the_model(
    enhanced: tuple[Path, str], model: Path, chest_nifti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from data.coco import read_coco

    other = save_tiny_restorer(tmp_path / "mine", lq_size=24)  # 48 px DRRs -> 24 px model input -> 48 px out
    args = ["generate", str(chest_nifti), *ARGS, "-n", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "mine_ds"), "--enhance", str(other)])
    assert result.exit_code == 0, result.output  # no packaged model needed for --enhance PATH
    (rec,) = read_coco(tmp_path / "mine_ds" / "annotations" / "coco.json")
    assert (rec.width, rec.height) == (48, 48) and rec.attributes["enhanced"]["model_dir"] == str(other)
    # A raw dataset's config.json run again stays raw even where a packaged model is installed.
    use_as_packaged(monkeypatch, model)
    raw = tmp_path / "raw"
    assert CliRunner().invoke(app, [*args, "--out", str(raw), "--no-enhance"]).exit_code == 0
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "again"), "--config", str(raw / "config.json")])
    assert result.exit_code == 0 and "enhance=off" in result.output
    # An enhanced dataset's config.json names its model by digest: another packaged model is refused in one line.
    use_as_packaged(monkeypatch, tmp_path / "mine")
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x"), "--config", str(enhanced[0] / "config.json")])
    assert result.exit_code == 1 and "not the model these settings were made with" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--no-enhance", "--enhance-steps", "2"], "--enhance-steps: no restoration"),
        (["--no-enhance", "--enhance", "m"], "--enhance and --no-enhance exclude each other"),
        (["--enhance-strength", "0"], "--enhance-strength"),
    ],
)
def test_enhance_option_errors_are_one_line(
    extra: list[str], expected: str, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_as_packaged(monkeypatch, model)
    result = CliRunner().invoke(app, ["generate", "--out", str(tmp_path / "o"), *extra])
    assert result.exit_code != 0 and expected in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------- convert


def test_convert_writes_one_enhanced_radiograph(
    model: Path, chest_nifti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom

    from data.images import read_png16

    use_as_packaged(monkeypatch, model)
    out = tmp_path / "cxr.png"
    args = ["convert", str(chest_nifti), "-o", str(out), "--size", "48", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--dicom"])
    assert result.exit_code == 0, result.output
    image = read_png16(out)
    assert image.shape == (96, 96) and "enhanced 96x96" in result.output
    assert np.array_equal(pydicom.dcmread(tmp_path / "cxr.dcm").pixel_array, image)
    first = out.read_bytes()
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "exists; use --overwrite" in refused.output and out.read_bytes() == first
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0 and out.read_bytes() == first  # same seed
    raw = CliRunner().invoke(app, ["convert", str(chest_nifti), "-o", str(tmp_path / "raw.png"), "--size", "48",
                                   "--no-enhance", "--device", "cpu"])  # fmt: skip
    assert raw.exit_code == 0 and read_png16(tmp_path / "raw.png").shape == (48, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cxr.dcm", "cxr.png", "raw.png"]


@pytest.mark.parametrize(
    "target, expected",
    [
        ("x.jpg", "give a name ending in .png"),
        ("missing/x.png", "does not exist"),
        ("folder.png", "is a folder"),
    ],
)
def test_convert_refuses_a_bad_destination_before_reading_the_ct(target: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "no-such-ct.nii.gz"), "-o", str(tmp_path / target)])
    assert result.exit_code == 1 and expected in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before


def test_convert_bad_ct_and_bad_model_write_nothing(chest_nifti: Path, tmp_path: Path) -> None:
    bad_ct = tmp_path / "ct.nii.gz"
    bad_ct.write_bytes(b"not a nifti")
    result = CliRunner().invoke(app, ["convert", str(bad_ct), "-o", str(tmp_path / "a.png"), "--no-enhance"])
    assert result.exit_code == 1 and str(bad_ct) in result.output and "Traceback" not in result.output
    model = save_tiny_restorer(tmp_path / "m", lq_size=48)
    (model / "config.json").write_text("{ not json")
    result = CliRunner().invoke(app, ["convert", str(chest_nifti), "-o", str(tmp_path / "b.png"), "--enhance", str(model)])
    assert result.exit_code == 1 and f"{model / 'config.json'}: not a readable JSON" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.png"))


def test_enhance_uses_the_packaged_model_without_model(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from data.images import read_png16, write_png16

    pytest.importorskip("data_store", reason="pip install pydicom-data")
    from pydicom.data import get_testdata_file

    images = tmp_path / "in"
    images.mkdir()
    write_png16(images / "drr.png", np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16))
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), images / "cr.dcm")  # MONOCHROME1, 1955 x 1841
    use_as_packaged(monkeypatch, None)
    result = CliRunner().invoke(app, ["enhance", str(images), "--out", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no packaged restoration model" in result.output
    assert not (tmp_path / "none").exists()
    use_as_packaged(monkeypatch, model)
    result = CliRunner().invoke(app, ["enhance", str(images), "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert read_png16(tmp_path / "out" / "drr.png").shape == (72, 96)  # longer side 48 (the model's), 2x
    assert read_png16(tmp_path / "out" / "cr.png").shape == (96, 90)
    info = json.loads((tmp_path / "out" / "enhance.json").read_text())
    assert info["steps"] == 4 and info["strength"] == 0.5  # the model's own sampler settings
