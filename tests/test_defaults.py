"""The dataset does not depend on the machine: without --size/-n a GPU run gets the same settings as a CPU run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import ct_projection.render
import pipeline.generate
from pipeline.cli import app
from pipeline.config import DEFAULT_IMAGES_PER_CT, DEFAULT_SIZE_PX


def run_on(device: str, args: list[str], ct: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """Invoke ``generate`` as if ``device`` were picked, capturing the config instead of rendering."""
    seen: dict[str, Any] = {}

    def fake_generate(inputs: list[str], out: Path, config: Any, **kwargs: Any) -> Any:
        seen["config"] = config
        return pipeline.generate.GenerateResult(out)

    monkeypatch.setattr(ct_projection.render, "pick_device", lambda _name: torch.device(device))
    monkeypatch.setattr(pipeline.generate, "generate", fake_generate)
    result = CliRunner().invoke(app, ["generate", str(ct), "--out", str(tmp_path / device), "--no-progress", *args])
    assert "config" in seen, result.output
    return seen["config"], result.output


def test_gpu_and_cpu_get_the_same_defaults_and_the_gpu_a_hint(
    chest_nifti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu, cpu_out = run_on("cpu", [], chest_nifti, tmp_path, monkeypatch)
    gpu, gpu_out = run_on("cuda", [], chest_nifti, tmp_path, monkeypatch)
    assert (cpu.geometry.size_px, cpu.images_per_ct) == (DEFAULT_SIZE_PX, DEFAULT_IMAGES_PER_CT) == (512, 6)
    assert gpu.fingerprint() == cpu.fingerprint()
    assert "hint: a GPU is available: --size 1024 -n 16" in gpu_out
    assert "hint:" not in cpu_out
    # Asking for a size (or a count) is a choice: no hint then.
    sized, sized_out = run_on("cuda", ["--size", "1024"], chest_nifti, tmp_path, monkeypatch)
    assert sized.geometry.size_px == 1024 and sized.images_per_ct == 6 and "hint:" not in sized_out
