"""Train MUNIT-LQ on unpaired HQ (real CXR) and LQ (DRR) folders, then degrade HQ images into (LQ, HQ) pairs.

Training follows MUNIT: Adam(lr 1e-4, betas (0.5, 0.999), weight decay 1e-4), one discriminator update then one
generator update per iteration, learning rate halved every ``lr_step_size`` iterations. It runs under
``accelerate`` (single device or multi-GPU via ``accelerate launch``), logs to TensorBoard, writes
``checkpoint-N`` folders with ``accelerator.save_state`` (oldest pruned past ``checkpoints_total_limit``) and
resumes from the latest one.

``make_pairs`` writes a pairs folder (layout in ``restoration.pairs``) that DDPM-HQ's trainer reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from data.atomic import atomic_write_json
from restoration.munit import MUNIT, MUNITConfig
from restoration.pairs import (
    PAIRS_INFO_NAME,
    PREPROCESS_NAME,
    downsample2x,
    item_seed,
    pair_names,
    read_preprocess,
    source_record,
    write_pair,
)
from restoration.preprocess import ImageFolderDataset, PreprocessConfig, list_images
from restoration.training_setup import (
    GeneratorState,
    MIXED_PRECISION,
    default_device,
    flat_config,
    infinite_batches,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    stream_seed,
    trainer_settings,
)

MODEL_SUBDIR = "model"
TRAIN_CONFIG_NAME = "train_config.json"
STYLE_MODES = ("random", "lq-extracted")


# -------------------------------------------------------------------------------------------- training


@dataclass
class MUNITTrainConfig:
    """MUNIT-LQ training run.

    Args:
        hq_dir: folder of real high-quality CXRs (domain a), searched recursively.
        lq_dir: folder of DRRs (domain b; 16-bit PNGs), searched recursively.
        output_dir: receives ``checkpoint-N/``, ``logs/`` and the final ``model/``.
        model: MUNIT architecture and loss weights.
        preprocess: windowing and image size for both domains.
        batch_size: images per domain per device per step (MUNIT uses 1).
        max_train_steps: total iterations (one D and one G update each).
        lr, adam_beta1, adam_beta2, adam_weight_decay: Adam settings for both optimisers (MUNIT: 1e-4, 0.5, 0.999,
            1e-4).
        lr_step_size, lr_gamma: multiply the learning rate by ``lr_gamma`` every ``lr_step_size`` steps (0: constant).
        augment: small random jitter of the training images.
        num_workers: DataLoader workers.
        seed: seeds initialisation, data order and style sampling.
        mixed_precision: one of "no", "fp16", "bf16".
        checkpointing_steps: save a checkpoint every this many steps (0: never).
        checkpoints_total_limit: keep at most this many checkpoints (None: all).
        resume: continue from the latest checkpoint in ``output_dir`` (true), start afresh (false) or continue from
            the ``checkpoint-N`` folder named.
        log_every: scalar logging interval in steps.
        sample_every: log an image grid (x_a, x_ab, x_b, x_ba) every this many steps (0: never).
        report_to: "tensorboard" or None.
        progress: show the progress bar.
    """

    hq_dir: str
    lq_dir: str
    output_dir: str
    model: MUNITConfig = field(default_factory=MUNITConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    batch_size: Annotated[int, Field(ge=1)] = 1
    max_train_steps: Annotated[int, Field(ge=0)] = 1_000_000
    lr: Annotated[float, Field(gt=0)] = 1e-4
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4  # MUNIT's published default (Adam, L2 weight decay 1e-4)
    lr_step_size: int = 100_000
    lr_gamma: float = 0.5
    augment: bool = False
    num_workers: Annotated[int, Field(ge=0)] = 2
    seed: Annotated[int, Field(ge=0)] = 0
    mixed_precision: str = "no"
    checkpointing_steps: int = 10_000
    checkpoints_total_limit: int | None = 3
    resume: bool | str = True
    log_every: int = 100
    sample_every: int = 5_000
    report_to: str | None = "tensorboard"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = MUNITConfig.from_dict(self.model)
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessConfig.from_dict(self.preprocess)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.report_to not in (None, "tensorboard"):
            raise ValueError(f"report_to must be 'tensorboard' or None, got {self.report_to!r}")
        if self.batch_size < 1 or self.max_train_steps < 0:
            raise ValueError("batch_size must be >= 1 and max_train_steps >= 0")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(f"checkpoints_total_limit must be >= 1 or None, got {self.checkpoints_total_limit}")
        m = 2**self.model.n_downsample
        if self.preprocess.size % m:
            raise ValueError(f"preprocess.size {self.preprocess.size} must be a multiple of 2**n_downsample = {m}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (nested model/preprocess dicts)."""
        from data.settings import settings_dict

        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MUNITTrainConfig:
        """Inverse of ``to_dict``, strictly validated (data.settings); pre-unification keys still load."""
        from data.settings import load_settings

        return load_settings(cls, trainer_settings(d))


def _make_loader(paths: list[Path], cfg: MUNITTrainConfig, what: str) -> torch.utils.data.DataLoader:
    if len(paths) < cfg.batch_size:
        raise ValueError(f"{what}: {len(paths)} images, fewer than batch_size={cfg.batch_size}")
    ds = ImageFolderDataset(paths, cfg.preprocess, augment=cfg.augment)
    return torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )  # fmt: skip


def _sample_grid(model: MUNIT, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """(1, H, 4W) image in [0, 1]: first HQ, its LQ translation, first LQ, its HQ translation."""
    with torch.no_grad():
        g = torch.Generator(device=x_a.device).manual_seed(0)
        x_ab = model.translate(x_a[:1], "a", generator=g)
        x_ba = model.translate(x_b[:1], "b", generator=g)
    row = torch.cat([x_a[:1], x_ab, x_b[:1], x_ba], dim=-1)[0].float()
    return ((row.clamp(-1, 1) + 1) / 2).cpu()


def train(cfg: MUNITTrainConfig) -> Path:
    """Train MUNIT-LQ; returns the final model folder (``output_dir/model``, loadable with ``MUNIT.load``).

    Raises:
        ValueError: when a folder holds no images or fewer than ``batch_size``.
    """
    from accelerate import Accelerator
    from accelerate.utils import (
        DataLoaderConfiguration,
        DistributedDataParallelKwargs,
        ProjectConfiguration,
        set_seed,
    )

    out = Path(cfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with=cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        # the D step leaves the generators unused (they run under no_grad)
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)  # same initial weights on every process
    model = MUNIT(cfg.model)
    set_seed(cfg.seed, device_specific=True)  # different style samples per process
    hq_paths, lq_paths = list_images(cfg.hq_dir), list_images(cfg.lq_dir)
    loader_a = _make_loader(hq_paths, cfg, f"hq_dir {cfg.hq_dir}")
    loader_b = _make_loader(lq_paths, cfg, f"lq_dir {cfg.lq_dir}")
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    opt_g = torch.optim.Adam(model.generator_parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.adam_weight_decay)
    opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.adam_weight_decay)
    model, opt_g, opt_d, loader_a, loader_b = accelerator.prepare(model, opt_g, opt_d, loader_a, loader_b)

    ckpt = resume_checkpoint(cfg.resume, out)
    rng = GeneratorState(stream_seed(cfg.seed, "train", accelerator.process_index))  # style codes; checkpointed for exact resume
    global_step = load_checkpoint(accelerator, ckpt, rng, rng_index=0)
    resumed_from = None if ckpt is None else ckpt.name
    if ckpt is not None:
        accelerator.print(f"resumed from {ckpt} at step {global_step}")

    if cfg.report_to:
        accelerator.init_trackers("munit_lq", config=flat_config(cfg.to_dict()))
    it_a = infinite_batches(accelerator, loader_a, global_step)
    it_b = infinite_batches(accelerator, loader_b, global_step)
    bar = tqdm(
        total=cfg.max_train_steps, initial=global_step, desc="MUNIT-LQ",
        disable=not cfg.progress or not accelerator.is_local_main_process,
    )  # fmt: skip
    model.train()
    while global_step < cfg.max_train_steps:
        x_a, x_b = next(it_a), next(it_b)
        lr = cfg.lr * (cfg.lr_gamma ** (global_step // cfg.lr_step_size) if cfg.lr_step_size > 0 else 1.0)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr

        opt_d.zero_grad(set_to_none=True)
        d = model(x_a, x_b, mode="dis", generator=rng.generator)
        accelerator.backward(d["total"])
        opt_d.step()

        opt_g.zero_grad(set_to_none=True)
        g = model(x_a, x_b, mode="gen", generator=rng.generator)
        accelerator.backward(g["total"])
        opt_g.step()
        opt_d.zero_grad(set_to_none=True)  # the G step also filled the discriminators' grads: drop them

        global_step += 1
        bar.update(1)
        if global_step % max(1, cfg.log_every) == 0 or global_step == cfg.max_train_steps:
            logs = {f"gen/{k}": float(v.detach()) for k, v in g.items()}
            logs |= {f"dis/{k}": float(v.detach()) for k, v in d.items()}
            if not all(math.isfinite(v) for v in logs.values()):  # checked here: float() syncs the device
                raise FloatingPointError(f"MUNIT loss is not finite at step {global_step}: {logs}")
            logs["lr"] = lr
            bar.set_postfix(G=f"{logs['gen/total']:.3f}", D=f"{logs['dis/total']:.3f}")
            accelerator.log(logs, step=global_step)
        if cfg.report_to and cfg.sample_every > 0 and global_step % cfg.sample_every == 0:
            if accelerator.is_main_process:
                writer = accelerator.get_tracker("tensorboard", unwrap=True)
                model.eval()
                grid = _sample_grid(accelerator.unwrap_model(model), x_a, x_b)
                writer.add_image("samples/a_ab_b_ba", grid, global_step)
                model.train()
        if cfg.checkpointing_steps > 0 and global_step % cfg.checkpointing_steps == 0:
            save_checkpoint(accelerator, out, global_step, cfg.checkpoints_total_limit)
    bar.close()

    accelerator.wait_for_everyone()
    model_dir = out / MODEL_SUBDIR
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save(model_dir)
        atomic_write_json(model_dir / PREPROCESS_NAME, cfg.preprocess.to_dict())
        info = cfg.to_dict() | {"global_step": global_step, "resumed_from": resumed_from}
        atomic_write_json(model_dir / TRAIN_CONFIG_NAME, info)
    accelerator.end_training()
    return model_dir


# ----------------------------------------------------------------------------------------------- pairs


@torch.no_grad()
def make_pairs(
    model_dir: str | Path,
    hq_dir: str | Path,
    out_dir: str | Path,
    style: Literal["random", "lq-extracted"] = "random",
    seed: int = 0,
    lq_dir: str | Path | None = None,
    batch_size: Annotated[int, Field(ge=1)] = 8,
    size: int | None = None,
    device: str | torch.device | None = None,
    disable_tqdm: bool = False,
) -> Path:
    """Degrade every HQ image with a trained MUNIT into a pairs folder (layout in the module docstring).

    Args:
        model_dir: folder written by :func:`train` (``output_dir/model``).
        hq_dir: HQ images to degrade (recursive).
        out_dir: pairs folder to write.
        style: "random" samples an N(0, I) LQ style per image; "lq-extracted" uses the style of a randomly
            chosen image from ``lq_dir``.
        seed: per-image styles (and LQ choices) derive from (seed, image index), so the batch size
            changes pixels by float rounding only.
        lq_dir: LQ images for ``style="lq-extracted"``.
        batch_size: images per forward pass.
        size: HQ side in pixels (default: the training size); must be even.
        device: default CUDA when available.
        disable_tqdm: hide the progress bar.

    Returns:
        ``out_dir``.
    """
    if style not in STYLE_MODES:
        raise ValueError(f"style must be one of {STYLE_MODES}, got {style!r}")
    if style == "lq-extracted" and lq_dir is None:
        raise ValueError("style='lq-extracted' needs lq_dir (the LQ images whose styles are extracted)")
    dev = default_device(device)
    model = MUNIT.load(model_dir, dev)
    pcfg = read_preprocess(model_dir, size)
    if pcfg.size % 2 or pcfg.size % 2**model.cfg.n_downsample:
        raise ValueError(f"size {pcfg.size} must be even and a multiple of 2**n_downsample")
    hq_paths = list_images(hq_dir)
    if not hq_paths:
        raise ValueError(f"{hq_dir}: no images")
    names = pair_names(hq_paths, hq_dir)
    hq_ds = ImageFolderDataset(hq_paths, pcfg)
    lq_ds = ImageFolderDataset(list_images(lq_dir), pcfg) if style == "lq-extracted" else None

    records: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(hq_ds), batch_size), desc="MUNIT pairs", disable=disable_tqdm):
        idx = list(range(start, min(start + batch_size, len(hq_ds))))
        x = torch.stack([hq_ds[i] for i in idx]).to(dev)
        sources: list[str | None] = []
        if lq_ds is None:
            styles = torch.cat(
                [model.sample_style(1, dev, torch.Generator().manual_seed(item_seed(seed, i))) for i in idx]
            )
            sources = [None] * len(idx)
        else:
            picks = [int(np.random.default_rng(item_seed(seed, i)).integers(len(lq_ds))) for i in idx]
            styles = model.encode_style(torch.stack([lq_ds[j] for j in picks]).to(dev))
            sources = [str(lq_ds.paths[j]) for j in picks]
        lq = downsample2x(model.translate_hq_to_lq(x, style=styles))
        for k, i in enumerate(idx):
            write_pair(out_dir, names[i], lq[k], x[k])
            records.append(source_record(names[i], hq_paths[i]) | {"style_source": sources[k]})
    info = {
        "method": "munit-lq",
        "model_dir": str(model_dir),
        "style": style,
        "seed": seed,
        "hq_size": pcfg.size,
        "lq_size": pcfg.size // 2,
        "preprocess": pcfg.to_dict(),
        "pairs": records,
    }
    atomic_write_json(Path(out_dir) / PAIRS_INFO_NAME, info)
    return Path(out_dir)
