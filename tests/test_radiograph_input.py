"""Radiographs read for restoration (``enhance``, evaluation): PNG flavours, MONOCHROME1 DICOM, damaged files and models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from data.images import write_png16
from pipeline.cli import app
from restoration.preprocess import load_grayscale
from restorer import save_tiny_restorer

GRADIENT = (np.arange(24 * 20).reshape(24, 20) % 256).astype(np.uint8)


def one_line_error(message: str, path: Path) -> None:
    """A single line that starts with the file's path."""
    assert "\n" not in message and message.startswith(str(path)), message


def test_8_and_16_bit_png_and_opaque_alpha_read_the_same(tmp_path: Path) -> None:
    Image.fromarray(GRADIENT).save(tmp_path / "g8.png")
    write_png16(tmp_path / "g16.png", GRADIENT.astype(np.uint16) * 257)  # the same grey levels on 16 bits
    rgba = np.dstack([GRADIENT] * 3 + [np.full_like(GRADIENT, 255)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([GRADIENT, np.full_like(GRADIENT, 255)]), "LA").save(tmp_path / "la.png")
    g8 = load_grayscale(tmp_path / "g8.png")
    assert g8.dtype == np.float32 and g8.shape == (24, 20)
    np.testing.assert_allclose(g8, GRADIENT / 255.0, atol=1e-6)
    for name in ("g16.png", "rgba.png", "la.png"):
        np.testing.assert_allclose(load_grayscale(tmp_path / name), g8, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_png_is_refused_in_one_line(mode: str, tmp_path: Path) -> None:
    alpha = np.full_like(GRADIENT, 255)
    alpha[:6] = 0  # the top quarter is see-through: no grey value to read there
    path = tmp_path / f"{mode}.png"
    if mode == "P":
        image = Image.fromarray(GRADIENT).convert("P")
        image.info["transparency"] = int(np.asarray(image)[0, 0])
        image.save(path, transparency=int(np.asarray(image)[0, 0]))
    else:
        bands = [GRADIENT] * (3 if mode == "RGBA" else 1)
        Image.fromarray(np.dstack([*bands, alpha]), mode).save(path)
    with pytest.raises(ValueError) as err:
        load_grayscale(path)
    one_line_error(str(err.value), path)
    assert "transparent pixels" in str(err.value)


def test_monochrome1_radiograph_is_inverted_through_its_luts() -> None:
    """RG1_UNCR.dcm: a 15-bit MONOCHROME1 CR chest PA; read with bone bright and lungs dark."""
    pytest.importorskip("data_store", reason="pip install pydicom-data")
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(get_testdata_file("RG1_UNCR.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 15
    img = load_grayscale(path)
    assert img.shape == (ds.Rows, ds.Columns) and img.min() == 0.0 and img.max() == 1.0
    voi = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    expected = 1.0 - (voi - voi.min()) / (voi.max() - voi.min())  # MONOCHROME1: high stored values are dark
    np.testing.assert_allclose(img, expected, atol=1e-6)
    h, w = img.shape
    spine = img[int(0.35 * h) : int(0.55 * h), int(0.47 * w) : int(0.53 * w)].mean()
    lungs = [img[int(0.3 * h) : int(0.5 * h), int(f * w) - w // 20 : int(f * w) + w // 20].mean() for f in (0.27, 0.73)]
    assert spine > max(lungs) + 0.1  # mediastinum and spine bright, aerated lungs dark, as a radiograph is read


def damaged_files(tmp_path: Path) -> dict[str, Path]:
    """A truncated PNG, a file that only claims to be DICOM, and a DICOM whose pixel data is cut short."""
    import pydicom
    from pydicom.data import get_testdata_file

    Image.fromarray(GRADIENT).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 8)
    out = {"truncated.png": tmp_path / "truncated.png", "fake.dcm": tmp_path / "fake.dcm"}
    source = get_testdata_file("CT_small.dcm")
    if source is not None:
        ds = pydicom.dcmread(source)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
        ds.save_as(tmp_path / "cut.dcm")
        out["cut.dcm"] = tmp_path / "cut.dcm"
    return out


def test_damaged_images_are_one_line_errors(tmp_path: Path) -> None:
    for path in damaged_files(tmp_path).values():
        with pytest.raises(ValueError) as err:
            load_grayscale(path)
        one_line_error(str(err.value), path)


def test_enhance_refuses_a_folder_with_one_bad_image_and_writes_nothing(tmp_path: Path) -> None:
    model = save_tiny_restorer(tmp_path / "model", lq_size=16)
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(GRADIENT).save(images / "a_good.png")
    rgba = np.dstack([GRADIENT] * 3 + [np.where(np.arange(24)[:, None] < 4, 0, 255).repeat(20, 1).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(images / "b_clear.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["enhance", str(images), "--model", str(model), "--out", str(out), "--no-progress"])
    assert result.exit_code == 1 and "b_clear.png: has transparent pixels" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize(
    "damage", ["missing", "no-weights", "no-index", "bad-json", "bad-unet-json", "truncated-weights", "garbage-weights"]
)
def test_missing_or_damaged_model_is_one_line_naming_the_file(damage: str, tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(GRADIENT).save(images / "a.png")
    model = tmp_path / "model"
    if damage != "missing":
        save_tiny_restorer(model, lq_size=16)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    named = model
    if damage == "no-weights":
        weights.unlink()
    elif damage == "no-index":
        (model / "model_index.json").unlink()
    elif damage == "bad-json":
        named = model / "model_index.json"
        named.write_text('{"lq_size": 16,')
    elif damage == "bad-unet-json":
        named = model / "unet" / "config.json"
        named.write_text("[1, 2")
    elif damage == "truncated-weights":
        named = weights
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "garbage-weights":
        named = weights
        weights.write_bytes(b"\xff" * 64)
    out = tmp_path / "out"
    for args in (["enhance", str(images), "--model", str(model), "--out", str(out)],
                 ["generate", "--out", str(out), "--enhance", str(model), "--no-progress"]):  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {named}"), result.output
        assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("where", ["inside", "same", "foreign", "link"])
def test_enhance_refuses_an_output_folder_it_does_not_own(where: str, tmp_path: Path) -> None:
    model = save_tiny_restorer(tmp_path / "model", lq_size=16)
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(GRADIENT).save(images / "a.png")
    out = {"inside": images / "out", "same": images, "foreign": tmp_path / "mine", "link": tmp_path / "link"}[where]
    if where == "foreign":
        out.mkdir()
        (out / "notes.txt").write_text("someone's")
    elif where == "link":
        (tmp_path / "target").mkdir()
        out.symlink_to(tmp_path / "target")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "model" not in p.parts}
    result = CliRunner().invoke(app, ["enhance", str(images), "--model", str(model), "--out", str(out)])
    assert result.exit_code == 1 and result.output.startswith(f"error: --out {out}:"), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "model" not in p.parts} == before
    # an earlier enhance output is the tool's own: a rerun may replace it
    done = tmp_path / "done"
    args = ["enhance", str(images), "--model", str(model), "--no-progress", "--out", str(done)]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert CliRunner().invoke(app, args).exit_code == 0
