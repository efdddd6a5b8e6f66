"""DDPM-HQ training at scale, tiny: random aligned crops, several pairs folders mixed, held-out patients, resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data.images import write_png16
from restoration.degrade import bicubic_degrade
from restoration.pipeline_ddpm_hq import DDPMHQPipeline
from restoration.splits import split_real

TINY = dict(
    block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, attention_levels=(False, False),
    num_train_timesteps=50, lr_scheduler="constant", lr_warmup_steps=0, cpu=True, progress=False, log_every=1,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


def toy_image(size: int, seed: int) -> np.ndarray:
    """A smooth 'radiograph' with some fine texture, in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.5 + 0.25 * np.sin(2 * np.pi * (rng.uniform(1, 3) * x + rng.uniform(0, 2) * y))
    img += 0.2 * np.exp(-((x - rng.uniform(0.3, 0.7)) ** 2 + (y - rng.uniform(0.3, 0.7)) ** 2) / 0.01)
    img += 0.03 * np.sin(2 * np.pi * 12 * x) * np.sin(2 * np.pi * 9 * y)
    return np.clip(img, 0, 1)


def real_folder(root: Path, n: int = 12, size: int = 64) -> Path:
    """An NIH-like folder: images/NAME.png (16-bit) and images.csv naming each image's patient (2 per patient)."""
    rows = ["image,patient_id"]
    for k in range(n):
        write_png16(root / "images" / f"im{k:02d}.png", np.rint(toy_image(size, k) * 65535).astype(np.uint16))
        rows.append(f"im{k:02d}.png,p{k // 2}")
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    return root


def pairs_folder(out: Path, real: Path, noise: float, seed: int) -> Path:
    """A make-pairs-like folder from every real image: hq/ (windowed), lq/ (bicubic + noise), pairs.json."""
    rng = np.random.default_rng(seed)
    records = []
    for p in sorted((real / "images").glob("*.png")):
        hq = toy_image(64, int(p.stem[2:]))
        lq = bicubic_degrade(torch.from_numpy(hq * 2 - 1)[None, None].float())[0, 0].numpy()
        lq = np.clip((lq + 1) / 2 + noise * rng.normal(size=lq.shape), 0, 1)
        write_png16(out / "hq" / p.name, np.rint(hq * 65535).astype(np.uint16))
        write_png16(out / "lq" / p.name, np.rint(lq * 65535).astype(np.uint16))
        records.append({"name": p.name, "hq_source": str(p)})
    (out / "pairs.json").write_text(json.dumps({"method": "test", "pairs": records}))
    return out


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_folder(tmp_path_factory.mktemp("real"))


def test_crops_are_aligned_pairs_of_the_whole_images(real: Path, tmp_path: Path) -> None:
    from restoration.train_ddpm_hq import PairSource, TrainConfig

    cfg = TrainConfig(hq_dir=str(real), lq_size=32, crop_size=8, output_dir=str(tmp_path))
    src = PairSource(cfg, sorted((real / "images").glob("*.png"))[:3], None)
    hq, lq = src.batch([0, 1, 2, 0], torch.Generator().manual_seed(0), augment=False, crop=8)
    assert hq.shape == (4, 1, 16, 16) and lq.shape == (4, 1, 8, 8)
    whole_lq = bicubic_degrade(torch.from_numpy(src.hq.array(0))[None, None])[0, 0]
    for k, i in enumerate([0, 1, 2, 0]):
        # the HQ crop is a window of the whole HQ image, and its LQ the same window of the whole image's LQ
        full = torch.from_numpy(src.hq.array(i))
        hits = [(y, x) for y in range(0, 49, 2) for x in range(0, 49, 2) if torch.equal(full[y : y + 16, x : x + 16], hq[k, 0])]
        assert len(hits) == 1
        if i == 0:
            y, x = hits[0]
            assert torch.allclose(whole_lq[y // 2 : y // 2 + 8, x // 2 : x // 2 + 8], lq[k, 0])
    again = src.batch([0, 1, 2, 0], torch.Generator().manual_seed(0), augment=True, crop=8)
    assert again[0].shape == hq.shape and not torch.equal(again[0], hq)  # gamma on both images
    assert TrainConfig(lq_size=32, crop_size=32).crop() is None  # a crop as large as the image: whole images
    assert TrainConfig(lq_size=32, crop_size=8, val_crop_size=16).crop(val=True) == 16


def test_two_pairs_folders_share_every_batch_equally() -> None:
    from restoration.train_ddpm_hq import mixed_indices

    for position in range(0, 48, 8):
        items = mixed_indices([5, 11], 8, position, seed=3)
        assert Counter(s for s, _ in items) == {0: 4, 1: 4}
    seen = [mixed_indices([5, 11], 2, p, seed=3)[0] for p in range(0, 20, 2)]  # source 0's first two epochs
    assert sorted(i for _, i in seen[:5]) == list(range(5)) and sorted(i for _, i in seen[5:]) == list(range(5))
    assert mixed_indices([5, 11], 8, 16, seed=3) == mixed_indices([5, 11], 8, 16, seed=3)


def test_weighted_mix_gives_each_pairs_folder_its_share() -> None:
    from restoration.train_ddpm_hq import TrainConfig, mixed_indices

    for position in range(0, 64, 8):
        items = mixed_indices([5, 11], 8, position, seed=3, weights=[3, 1])
        assert Counter(s for s, _ in items) == {0: 6, 1: 2}
    # every source still walks through whole epochs of its own permutation
    first = [i for s, i in mixed_indices([5, 11], 40, 0, seed=3, weights=[3, 1]) if s == 0][:10]
    assert sorted(first[:5]) == list(range(5)) and sorted(first[5:]) == list(range(5))
    assert mixed_indices([5, 11], 8, 8, seed=3, weights=[1, 1]) == mixed_indices([5, 11], 8, 8, seed=3)
    with pytest.raises(ValueError, match="one integer >= 1 per source"):
        mixed_indices([5, 11], 8, 0, seed=3, weights=[1])
    with pytest.raises(ValueError, match="pairs_weights"):
        TrainConfig(pair_source="pairs_dir", pairs_dirs=("a", "b"), pairs_weights=(3,))


def test_lq_noise_augmentation_has_the_drawn_strength() -> None:
    from restoration.train_ddpm_hq import add_lq_noise

    lq = torch.zeros(64, 1, 32, 32)
    assert add_lq_noise(lq, 0.0, torch.Generator().manual_seed(0)) is lq
    noisy = add_lq_noise(lq, 0.03, torch.Generator().manual_seed(0))
    stds = noisy.flatten(1).std(dim=1)
    assert stds.max() <= 0.03 * 1.1 and stds.min() < 0.005  # per-item std drawn from U(0, 0.03)
    assert abs(float(stds.mean()) - 0.015) < 0.004
    assert torch.equal(noisy, add_lq_noise(lq, 0.03, torch.Generator().manual_seed(0)))


def test_init_from_copies_weights_and_refuses_another_architecture(tmp_path: Path) -> None:
    from restoration.ddpm_hq import DDPMHQConfig, build_unet
    from restoration.train_ddpm_hq import load_init_weights

    cfg = DDPMHQConfig(lq_size=32, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
    torch.manual_seed(1)
    src = build_unet(cfg)
    src.save_pretrained(tmp_path / "model" / "unet")
    torch.manual_seed(2)
    dst = build_unet(cfg)
    load_init_weights(dst, tmp_path / "model")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    other = build_unet(DDPMHQConfig(lq_size=32, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8))
    with pytest.raises(ValueError, match="does not match"):
        load_init_weights(other, tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="not a DDPM-HQ model folder"):
        load_init_weights(dst, tmp_path)


def test_held_out_patients_never_train(real: Path, tmp_path: Path) -> None:
    from restoration.train_ddpm_hq import TrainConfig, training_data

    train_part, held = split_real(sorted((real / "images").glob("*.png")))
    assert train_part and held  # the toy folder has both parts
    cfg = TrainConfig(hq_dir=str(real), lq_size=32, crop_size=8, output_dir=str(tmp_path), num_val_images=3)
    data = training_data(cfg)
    trained = {str(p) for src in data.sources for p in src.hq.paths}
    assert trained == {str(p) for p in train_part}
    assert set(data.split["train"]["sources"]) == trained
    assert set(data.split["val"]["sources"]) == set(data.split["held_out"]["sources"]) == {str(p) for p in held}
    assert data.val_hq is not None and data.val_hq.shape == (min(3, len(held)), 1, 16, 16)
    assert set(data.split["train"]["groups"]).isdisjoint(data.split["val"]["groups"])  # by patient (images.csv)
    assert all(g.startswith("patient:p") for g in data.split["train"]["groups"])
    # pairs folders made from every image: the pairs of held-out patients (by their hq_source) are left out too
    a, b = pairs_folder(tmp_path / "a", real, 0.02, 0), pairs_folder(tmp_path / "b", real, 0.05, 1)
    cfg = TrainConfig(pair_source="pairs_dir", pairs_dirs=(str(a), str(b)), lq_size=32, crop_size=8, output_dir=str(tmp_path))
    data = training_data(cfg)
    assert [src.name for src in data.sources] == ["a", "b"]
    assert all({p.name for p in src.hq.paths} == {p.name for p in train_part} for src in data.sources)
    assert set(data.split["sources"]["b"]["held_out"]["sources"]) == {str(p) for p in held}
    with pytest.raises(ValueError, match="pairs_dirs is set but pair_source is 'bicubic'"):
        TrainConfig(pairs_dirs=(str(a),))
    info = json.loads((b / "pairs.json").read_text())
    (b / "pairs.json").write_text(json.dumps({**info, "complete": False}))  # make-pairs still running (or killed)
    with pytest.raises(ValueError, match="make-pairs has not finished this folder"):
        training_data(cfg)
    with pytest.raises(ValueError, match="not a pairs folder"):
        training_data(TrainConfig(pair_source="pairs_dir", pairs_dirs=(str(real),), lq_size=32))


@pytest.mark.slow
def test_crop_training_learns_and_resumes_exactly(real: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from restoration.train_ddpm_hq import TrainConfig, train
    from restoration.training_setup import checkpoint_dirs

    a, b = pairs_folder(tmp_path / "munit", real, 0.02, 0), pairs_folder(tmp_path / "ddpmlq", real, 0.05, 1)
    base = dict(
        pair_source="pairs_dir", pairs_dirs=(str(a), str(b)), lq_size=32, crop_size=8, batch_size=4, lr=2e-3,
        validation_steps=0, checkpoints_total_limit=2, **TINY,
    )  # fmt: skip
    whole = train(TrainConfig(output_dir=str(tmp_path / "whole"), max_train_steps=40, checkpointing_steps=0, **base))
    losses = [json.loads(line)["loss"] for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:5])  # it learns the residual of the fixed pairs (0.78 measured)
    out = tmp_path / "killed"
    train(TrainConfig(output_dir=str(out), max_train_steps=25, checkpointing_steps=5, **base))  # "killed" at 25
    train(TrainConfig(output_dir=str(out), max_train_steps=40, checkpointing_steps=5, **base))  # resumes at 25
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-35", "checkpoint-40"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    wa = load_file(whole / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the run folder is a DDPMHQPipeline folder that restores whole images (its sampler: the validated one)
    pipe = DDPMHQPipeline.from_pretrained(str(out), local_files_only=True)
    assert pipe.config.lq_size == 32 and pipe.config.space_to_depth == 4
    assert (pipe.config.num_inference_steps, pipe.config.strength) == (8, 0.5)
    img = toy_image(64, 0).astype(np.float32)
    a = pipe(img, generator=torch.Generator().manual_seed(0)).images[0]
    b = pipe(img, generator=torch.Generator().manual_seed(0)).images[0]
    assert a.shape == (64, 64) and np.array_equal(a, b) and 0.0 <= a.min() and a.max() <= 1.0


def test_crop_must_fit_the_unet(real: Path, tmp_path: Path) -> None:
    from restoration.train_ddpm_hq import TrainConfig, train

    cfg = TrainConfig(hq_dir=str(real), output_dir=str(tmp_path), lq_size=32, crop_size=6, **TINY)
    with pytest.raises(ValueError, match="crop_size 6: the HQ crop side 12 must be a multiple of 8"):
        train(cfg)


@pytest.mark.slow
def test_paper_size_recipe_runs_under_accelerate_launch(real: Path, tmp_path: Path) -> None:
    """The GPU recipe of docs/TRAINING.md (``accelerate launch -m pipeline.cli train ddpm-hq --config paper-size``)
    on CPU with tiny images: the paper-size UNet trains 2 steps in bf16, validates, and saves a loadable pipeline."""
    import os
    import subprocess
    import sys

    from restoration.pipeline_ddpm_hq import load_pipeline

    out = tmp_path / "paper"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pipeline.cli", "train", "ddpm-hq",
        "--config", "paper-size", "--hq-dir", str(real), "-o", str(out), "--steps", "2",
        "--set", "lq_size=32", "--set", "crop_size=16", "--set", "batch_size=2", "--set", "validation_steps=2",
        "--set", "num_val_images=2", "--set", "progress=false",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["mixed_precision"] == "bf16" and saved["block_out_channels"] == [64, 128, 256, 256]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["val/psnr"])
    pipe = load_pipeline(out)
    assert pipe.config.space_to_depth == 1 and pipe.unet.config.add_attention  # the paper-size UNet
    assert pipe(toy_image(64, 1).astype(np.float32), generator=torch.Generator().manual_seed(0)).images[0].shape == (64, 64)


def test_named_training_configs() -> None:
    from restoration.train_ddpm_hq import TRAIN_PRESETS, TrainConfig, preset_settings

    for name in TRAIN_PRESETS:
        cfg = TrainConfig.from_dict(preset_settings(name))
        assert cfg.lq_size == 512 and cfg.crop() is not None  # whole images at 512 -> 1024, trained on crops
        assert (cfg.crop() * cfg.scale) % cfg.model_config().size_multiple == 0
    assert not TrainConfig.from_dict(preset_settings("cpu")).model_config().has_attention
    with pytest.raises(ValueError, match="expected a JSON file or one of cpu, paper-size"):
        preset_settings("paper")


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_same_weights(real: Path, tmp_path: Path) -> None:
    """A CLI training killed with SIGKILL mid-run and rerun ends with the weights of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from restoration.train_ddpm_hq import TrainConfig, train

    settings = dict(hq_dir=str(real), lq_size=32, crop_size=8, batch_size=4, max_train_steps=80, lr=1e-3,
                    lr_scheduler="cosine", lr_warmup_steps=10, checkpointing_steps=5, checkpoints_total_limit=2,
                    validation_steps=0, **{k: v for k, v in TINY.items() if k not in ("lr_scheduler", "lr_warmup_steps")})  # fmt: skip
    whole = train(TrainConfig(output_dir=str(tmp_path / "whole"), **settings))
    (tmp_path / "cfg.json").write_text(json.dumps(TrainConfig(**settings).to_dict()))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "ddpm-hq", "--config", str(tmp_path / "cfg.json"), "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoint-20").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines())
    assert killed_at < 80 and not (out / "model_index.json").exists()  # it really died mid-run
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stdout + done.stderr
    wa = load_file(whole / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
