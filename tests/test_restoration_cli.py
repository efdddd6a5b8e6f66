"""The restoration stage through the CLI: train ddpm-hq → enhance → evaluate → generate --enhance (tiny sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app

pytestmark = pytest.mark.slow  # trains a DDPM-HQ model through the CLI

TINY = [
    "--set", "lq_size=48", "--set", "block_out_channels=[8,16]", "--set", "norm_num_groups=4",
    "--set", "layers_per_block=1", "--set", "attention_levels=[false,false]", "--set", "batch_size=2",
    "--set", "checkpointing_steps=2", "--set", "validation_steps=1000", "--set", "val_fraction=0.25",
    "--set", "group_by=stem", "--set", "progress=false", "--set", "lr_warmup_steps=0",
    "--set", "num_train_timesteps=50",
]


def write_cxrs(folder: Path, n: int = 8) -> Path:
    """Smooth synthetic 'radiographs' (8-bit PNGs) as the HQ domain."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48] / 48.0
    for i in range(n):
        img = 0.5 + 0.3 * np.sin(6 * xx + i) * np.cos(4 * yy) + 0.05 * rng.normal(size=xx.shape)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"cxr{i}.png")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("restore")
    hq = write_cxrs(root / "hq")
    out = root / "ddpm_hq"
    result = CliRunner().invoke(app, ["train", "ddpm-hq", "--hq-dir", str(hq), "-o", str(out), "--steps", "4", *TINY])
    assert result.exit_code == 0, result.output
    return hq, out  # the final model is saved in the output folder, beside its checkpoint-N folders


def test_train_writes_checkpoints_and_a_safetensors_model(trained: tuple[Path, Path]) -> None:
    _, model = trained
    assert (model / "model_index.json").is_file() and (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in model.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_enhance_doubles_the_size_deterministically(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from data.images import read_png16

    hq, model = trained
    args = ["enhance", str(hq), "--model", str(model), "--steps", "2", "--device", "cpu", "--no-progress"]
    a = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    b = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output
    img = read_png16(tmp_path / "a" / "cxr0.png")
    assert img.shape == (96, 96)  # 48 px input (the model's lq_size) restored at 2x
    assert json.loads((tmp_path / "a" / "enhance.json").read_text())["files"][0]["output_size"] == [96, 96]
    assert (tmp_path / "a" / "cxr0.png").read_bytes() == (tmp_path / "b" / "cxr0.png").read_bytes()


def test_evaluate_reports_psnr_ssim(trained: tuple[Path, Path], tmp_path: Path) -> None:
    hq, model = trained
    out = tmp_path / "m.json"
    args = ["evaluate", "--model", str(model), "--hq-dir", str(hq), "--steps", "2", "--device", "cpu", "--json",
            str(out), "--figure", str(tmp_path / "fig.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 8 and np.isfinite(metrics["model"]["psnr"]) and 0 < metrics["bicubic"]["ssim"] <= 1
    assert metrics["sampler"] == "ddim:2" and metrics["seconds"]["per_image"] > 0
    assert (tmp_path / "fig.png").is_file()


def test_evaluate_sampler_sweep_table_and_json(trained: tuple[Path, Path], tmp_path: Path) -> None:
    hq, model = trained
    out = tmp_path / "sweep.json"
    args = ["evaluate", "--model", str(model), "--hq-dir", str(hq), "--device", "cpu", "--json", str(out),
            "--sampler", "ddim:2", "--sampler", "dpmsolver++:2", "--sampler", "ddpm:4", "--strength", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert [r[0] for r in rows if r and r[0].endswith(":0.5")] == ["ddim:2:0.5", "dpmsolver++:2:0.5", "ddpm:4:0.5"]
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 8 and [r["steps_run"] for r in metrics["runs"]] == [1, 1, 2]
    assert all(r["seconds"]["per_image"] > 0 and np.isfinite(r["model"]["psnr"]) for r in metrics["runs"])
    bad = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--hq-dir", str(hq), "--sampler", "ddim"])
    assert bad.exit_code != 0 and "scheduler:steps" in bad.output


def test_missing_model_says_how_to_train_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["enhance", str(tmp_path), "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "diffusionxray train ddpm-hq" in result.output and "never downloaded" in result.output


def test_generate_enhance_scales_boxes(trained: tuple[Path, Path], chest_nifti: Path, tmp_path: Path) -> None:
    from data.coco import read_coco
    from data.images import read_png16

    _, model = trained
    out = tmp_path / "ds"
    args = ["generate", str(chest_nifti), "--out", str(out), "--size", "48", "-n", "1", "--no-progress",
            "--device", "cpu", "--enhance", str(model), "--enhance-steps", "2", "--diameter-min", "15"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (rec,) = read_coco(out / "annotations" / "coco.json")
    assert (rec.width, rec.height) == (96, 96)
    assert read_png16(out / rec.file_name).shape == (96, 96)
    assert read_png16(out / rec.attributes["drr_file"]).shape == (48, 48)
    # the nodule-free twin is restored the same way (same size, same noise); its raw DRR is kept beside it
    assert read_png16(out / rec.attributes["nodule_free_file"]).shape == (96, 96)
    assert read_png16(out / rec.attributes["drr_nodule_free_file"]).shape == (48, 48)
    for nod in rec.nodules:
        x, y, w, h = nod.bbox_xywh
        dx, dy, dw, dh = nod.attributes["drr_bbox_xywh"]
        assert (x, y, w, h) == (2 * dx, 2 * dy, 2 * dw, 2 * dh)
        assert nod.footprint.shape == (96, 96) and nod.footprint.sum() == 4 * nod.attributes["footprint_px"]
    # the same dataset through evaluate-nodules: every footprint measured, the summary written
    summary = tmp_path / "nodules.json"
    result = CliRunner().invoke(app, ["evaluate-nodules", str(out), "--json", str(summary)])
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    assert data["nodules"] == len(rec.nodules) and "median contrast ratio" in result.output
    assert all(np.isfinite(r["before"]) for r in data["per_nodule"])


def test_generate_enhance_non_integer_factor(trained: tuple[Path, Path], chest_nifti: Path, tmp_path: Path) -> None:
    """64 px DRRs are resized to the model's 48 px scale and restored 2x: 96 px, boxes x1.5, footprints resampled."""
    from data.coco import read_coco
    from data.images import read_png16

    _, model = trained
    out = tmp_path / "ds"
    args = ["generate", str(chest_nifti), "--out", str(out), "--size", "64", "-n", "1", "--no-progress",
            "--device", "cpu", "--enhance", str(model), "--enhance-steps", "1", "--diameter-min", "15"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (rec,) = read_coco(out / "annotations" / "coco.json")
    assert (rec.width, rec.height) == (96, 96) and read_png16(out / rec.attributes["drr_file"]).shape == (64, 64)
    assert rec.attributes["enhanced"]["input_size"] == 48
    assert rec.nodules
    for nod in rec.nodules:
        box, drr_box = np.array(nod.bbox_xywh), np.array(nod.attributes["drr_bbox_xywh"])
        assert np.allclose(box, 1.5 * drr_box)
        assert nod.footprint.shape == (96, 96) and nod.footprint.any()


def test_evaluate_nodules_refuses_a_dataset_without_restoration(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate-nodules", str(tmp_path)])
    assert result.exit_code != 0 and "no annotations/coco.json" in result.output
