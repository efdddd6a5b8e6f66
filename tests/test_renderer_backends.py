"""``generate --renderer``: both backends make the same dataset (images and boxes agree); the choice is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from pipeline.cli import app


def run(chest_nifti: Path, out: Path, *extra: str) -> CliRunner:
    """One 64 px image of the synthetic chest with two large solid nodules."""
    args = ["generate", str(chest_nifti), "--out", str(out), "-n", "1", "--size", "64", "--no-progress",
            "--device", "cpu", "--nodules-min", "2", "--nodules-max", "2", "--diameter-min", "16",
            "--diameter-max", "22", "--types", "solid", "--shapes", "sphere", *extra]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_generate_with_each_renderer_agrees(chest_nifti: Path, tmp_path: Path) -> None:
    from data.images import read_png16

    results = {}
    for name in ("diffdrr", "nanodrr"):
        out = tmp_path / name
        result = run(chest_nifti, out, "--renderer", name)
        assert result.exit_code == 0, result.output
        assert json.loads((out / "config.json").read_text())["renderer"] == name
        (record,) = [json.loads(line)["record"] for line in (out / "manifest.jsonl").read_text().splitlines()]
        image = read_png16(out / record["file_name"]).astype(np.float64)
        results[name] = (image, sorted(tuple(n["bbox_xywh"]) for n in record["nodules"]))
    (a, boxes_a), (b, boxes_b) = results["diffdrr"], results["nanodrr"]
    a0, b0 = a - a.mean(), b - b.mean()
    assert float((a0 * b0).sum() / np.sqrt((a0 * a0).sum() * (b0 * b0).sum())) >= 0.99
    assert len(boxes_a) == len(boxes_b) == 2
    assert np.abs(np.subtract(boxes_a, boxes_b)).max() <= 2.0, (boxes_a, boxes_b)


def test_unknown_renderer_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["generate", "--renderer", "raytrace", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "diffdrr, nanodrr" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
