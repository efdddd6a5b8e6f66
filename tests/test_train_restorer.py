"""scripts/train_restorer.sh --tiny: the whole retraining chain (DRRs -> degraders -> pairs -> DDPM-HQ x 2) resumes,
never trains on held-out patients and installs a loadable pipeline folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.images import write_png16
from restoration.splits import split_real

pytestmark = pytest.mark.slow  # renders two DRR runs and trains five tiny models through the CLI (~2-4 min)

ROOT = Path(__file__).resolve().parents[1]


def fake_nih(root: Path, n: int = 12) -> Path:
    """An NIH-like folder of smooth 128 px 'radiographs' with images.csv (two images per patient)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:128] / 128
    rows = ["image,patient_id"]
    for k in range(n):
        img = 0.5 + 0.3 * np.sin(2 * np.pi * (rng.uniform(1, 3) * x + rng.uniform(0, 2) * y)) + 0.05 * rng.random(x.shape)
        write_png16(root / "images" / f"{k:08d}_000.png", np.rint(np.clip(img, 0, 1) * 65535).astype(np.uint16))
        rows.append(f"{k:08d}_000.png,{k // 2}")
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    return root


def test_tiny_chain_resumes_and_installs(tmp_path: Path) -> None:
    from restoration.pipeline_ddpm_hq import load_pipeline

    nih = fake_nih(tmp_path / "nih")
    run, dest = tmp_path / "run", tmp_path / "pretrained" / "ddpm-hq"
    env = {**os.environ, "PYTHON": sys.executable, "NIH": str(nih), "MHH": "", "PRETRAINED_DIR": str(dest)}
    script = ["bash", str(ROOT / "scripts" / "train_restorer.sh"), "--tiny", str(run)]
    first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    stages = {"drr_example_pa", "drr_example_ap", "munit", "ddpm_lq1", "ddpm_lq2", "pairs_munit", "pairs_ddpm_lq",
              "pairs_munit_heldout", "pairs_ddpm_lq_heldout", "pairs_ddpm_lq_light", "pairs_munit_anchored",
              "ddpm_hq_bicubic1_2", "ddpm_hq_bicubic1_4", "ddpm_hq_2", "ddpm_hq_bicubic_2"}  # fmt: skip
    # (tiny BASELINE_STEPS="2 4": a second budget continues the first; SHIP_STEPS=2 fine-tunes the baseline)
    assert {p.name for p in (run / ".done").iterdir()} == stages
    train_part, held = split_real(sorted((nih / "images").glob("*.png")))
    assert train_part and held
    for name in ("pairs_munit", "pairs_ddpm_lq"):  # training pairs only of train patients; held-out ones apart
        sources = {r["hq_source"] for r in json.loads((run / name / "pairs.json").read_text())["pairs"]}
        assert {Path(s).name for s in sources} == {p.name for p in train_part}
        sources = {r["hq_source"] for r in json.loads((run / f"{name}_heldout" / "pairs.json").read_text())["pairs"]}
        assert {Path(s).name for s in sources} == {p.name for p in held}
    light = json.loads((run / "pairs_ddpm_lq_light" / "pairs.json").read_text())["pairs"]
    assert {Path(r["hq_source"]).name for r in light} == {p.name for p in train_part}
    steps = [json.loads(line)["step"] for line in (run / "ddpm_hq_bicubic1" / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 2 and steps[-1] == 4 and (run / "ddpm_hq_bicubic1" / "checkpoint-4").is_dir()  # resumed at 3
    shipped_cfg = json.loads((run / "ddpm_hq" / "train_config.json").read_text())
    assert [Path(d).name for d in shipped_cfg["pairs_dirs"]] == ["pairs_ddpm_lq_light", "pairs_munit_anchored"]
    assert shipped_cfg["pairs_weights"] == [3, 1] and shipped_cfg["lq_noise_std"] == 0.0
    for name in ("ddpm_hq", "ddpm_hq_bicubic"):  # both fine-tune the baseline with the same budget
        assert Path(json.loads((run / name / "train_config.json").read_text())["init_from"]).name == "ddpm_hq_bicubic1"
        pipe = load_pipeline(run / name)
        assert pipe.config.lq_size == 64 and pipe.config.anchor_sigma == 3.0 and pipe.sampler_name == "ddim"
        assert (pipe.config.num_inference_steps, pipe.config.strength) == (8, 0.5)
    baseline = json.loads((run / "ddpm_hq_bicubic" / "split.json").read_text())
    assert {Path(s).name for s in baseline["train"]["sources"]} == {p.name for p in train_part}
    # a second run finds every stage done, and --install copies the shipped pipeline where it was asked to
    again = subprocess.run([*script[:2], "--install", *script[2:]], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count(": done") == len(stages) and "running" not in again.stdout
    assert sorted(p.name for p in dest.iterdir()) == ["model_index.json", "scheduler", "unet"]
    assert (dest / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        run / "ddpm_hq" / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()
    assert not list(dest.parent.glob(".ddpm-hq.*"))  # no temporary folder left behind
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "train_restorer.sh"), "--fast"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "train_restorer.sh: unknown option --fast (expected --tiny, --install, RUN_DIR)"
    )
