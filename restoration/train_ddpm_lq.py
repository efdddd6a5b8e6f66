"""Two-stage DDPM-LQ training (after diffusers' train_unconditional.py) and SDEdit HQ -> LQ pair generation.

Stage 1 learns every radiograph (HQ real CXRs and LQ DRRs) with the condition channel zeroed; stage 2 resumes from
the stage-1 model and fine-tunes on LQ only (optionally conditioned on paired HQ images from a pairs folder, with
classifier-free dropout of the condition). See ``docs/DDPM_LQ.md`` for why. Training runs under ``accelerate``
(mixed precision, gradient accumulation, multi-GPU), keeps an EMA of the weights (diffusers ``EMAModel``), writes
``checkpoint-N`` folders (oldest pruned past the limit), resumes from the latest, and saves the EMA weights with
``save_pretrained`` into ``output_dir/model`` at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
import torch.nn.functional as F
from tqdm.auto import tqdm

from data.atomic import atomic_write_json
from restoration import ddpm_lq
from restoration.ddpm_lq import DDPMLQConfig, build_scheduler, build_unet, model_input, sdedit
from restoration.preprocess import ImageFolderDataset, PreprocessConfig, list_images, load_grayscale, prewindowed_image
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

STAGES = (1, 2)
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


@dataclass
class DDPMLQTrainConfig:
    """One DDPM-LQ training stage.

    Args:
        lq_dir: DRRs (LQ domain, 16-bit PNGs), searched recursively; used by both stages.
        output_dir: receives ``checkpoint-N/``, ``logs/`` and the final ``model/``.
        hq_dir: real CXRs (HQ domain); required by stage 1, unused by stage 2.
        pairs_dir: optional stage-2 pairs folder (``lq/``, ``hq/``): trains LQ conditioned on its HQ partner.
        cond_drop_prob: probability of zeroing the condition per sample when ``pairs_dir`` is used.
        model: UNet and noise schedule (stage 2 takes the architecture of its stage-1 model).
        preprocess: windowing and size (``preprocess.size`` must equal ``model.image_size``).
        batch_size: images per device per micro-batch.
        max_train_steps: optimiser steps of this stage.
        gradient_accumulation_steps: micro-batches per optimiser step.
        lr, adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon: AdamW settings (train_unconditional's defaults).
        lr_scheduler: one of ``LR_SCHEDULERS``; lr_warmup_steps: its warm-up.
        max_grad_norm: gradient clipping norm.
        use_ema, ema_max_decay, ema_inv_gamma, ema_power: EMA of the weights (warm-up schedule); the EMA weights
            are what gets saved at the end.
        augment: small random jitter of the training images.
        num_workers: DataLoader workers.
        seed: seeds initialisation, data order, noise and timesteps.
        mixed_precision: one of "no", "fp16", "bf16".
        checkpointing_steps: save a checkpoint every this many steps (0: never).
        checkpoints_total_limit: keep at most this many checkpoints (None: all).
        resume: continue from the latest checkpoint in ``output_dir`` (true), start afresh (false) or continue from
            the ``checkpoint-N`` folder named.
        log_every: scalar logging interval in steps.
        report_to: "tensorboard" or None.
        progress: show the progress bar.
    """

    lq_dir: str
    output_dir: str
    hq_dir: str | None = None
    pairs_dir: str | None = None
    cond_drop_prob: float = 0.1
    model: DDPMLQConfig = field(default_factory=DDPMLQConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    batch_size: Annotated[int, Field(ge=1)] = 16
    max_train_steps: Annotated[int, Field(ge=0)] = 100_000
    gradient_accumulation_steps: int = 1
    lr: Annotated[float, Field(gt=0)] = 1e-4
    adam_beta1: float = 0.95
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-6
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 500
    max_grad_norm: float = 1.0
    use_ema: bool = True
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    augment: bool = False
    num_workers: Annotated[int, Field(ge=0)] = 2
    seed: Annotated[int, Field(ge=0)] = 0
    mixed_precision: str = "no"
    checkpointing_steps: int = 5_000
    checkpoints_total_limit: int | None = 3
    resume: bool | str = True
    log_every: int = 50
    report_to: str | None = "tensorboard"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = DDPMLQConfig.from_dict(self.model)
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessConfig.from_dict(self.preprocess)
        if self.preprocess.size != self.model.image_size:
            raise ValueError(
                f"preprocess.size ({self.preprocess.size}) must equal model.image_size ({self.model.image_size})"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        if self.report_to not in (None, "tensorboard"):
            raise ValueError(f"report_to must be 'tensorboard' or None, got {self.report_to!r}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1 or self.max_train_steps < 0:
            raise ValueError("batch_size and gradient_accumulation_steps must be >= 1, max_train_steps >= 0")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(f"checkpoints_total_limit must be >= 1 or None, got {self.checkpoints_total_limit}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (nested model/preprocess dicts)."""
        from data.settings import settings_dict

        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DDPMLQTrainConfig:
        """Inverse of ``to_dict``, strictly validated (data.settings); pre-unification keys still load."""
        from data.settings import load_settings

        return load_settings(cls, trainer_settings(d))


# --------------------------------------------------------------------------------------------- datasets


class UnconditionalDataset(torch.utils.data.Dataset):
    """(image, zeros) items: the condition channel of an unconditional stage."""

    def __init__(self, images: torch.utils.data.Dataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return x, torch.zeros_like(x)


class PairsDataset(torch.utils.data.Dataset):
    """(LQ, HQ) items from a pairs folder, both at ``size`` (LQ upsampled); pixel values mapped linearly to [-1, 1].

    Pairs folders are already windowed when written, so no percentile window is applied again (it would
    shift LQ and HQ differently).
    """

    def __init__(self, pairs_dir: str | Path, size: int) -> None:
        root = Path(pairs_dir)
        if not (root / "lq").is_dir() or not (root / "hq").is_dir():
            raise ValueError(f"{root}: not a pairs folder (needs lq/ and hq/)")
        self.names = sorted(p.name for p in (root / "lq").glob("*.png") if (root / "hq" / p.name).is_file())
        if not self.names:
            raise ValueError(f"{root}: no matching lq/NAME.png and hq/NAME.png")
        self.root, self.size = root, size

    def __len__(self) -> int:
        return len(self.names)

    def _read(self, sub: str, name: str) -> torch.Tensor:
        img = prewindowed_image(load_grayscale(self.root / sub / name), self.size)
        return torch.from_numpy(np.ascontiguousarray(img))[None]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._read("lq", self.names[i]), self._read("hq", self.names[i])


def _training_data(cfg: DDPMLQTrainConfig, stage: int) -> tuple[torch.utils.data.Dataset, bool]:
    """(dataset of (x, condition), whether the condition is real) for ``stage``."""
    lq = ImageFolderDataset(list_images(cfg.lq_dir), cfg.preprocess, augment=cfg.augment)
    if stage == 1:
        if cfg.hq_dir is None:
            raise ValueError("stage 1 trains on HQ and LQ images: set hq_dir")
        hq = ImageFolderDataset(list_images(cfg.hq_dir), cfg.preprocess, augment=cfg.augment)
        return UnconditionalDataset(torch.utils.data.ConcatDataset([hq, lq])), False
    if cfg.pairs_dir is not None:
        return PairsDataset(cfg.pairs_dir, cfg.model.image_size), True
    return UnconditionalDataset(lq), False


# --------------------------------------------------------------------------------------------- training


def _load_init(init_from: str | Path, cfg: DDPMLQTrainConfig, accelerator: Any) -> tuple[Any, Any, DDPMLQConfig]:
    """Stage-1 UNet/scheduler/config for stage 2; the stage-1 architecture wins over ``cfg.model``."""
    unet, scheduler, init_cfg = ddpm_lq.load(init_from, "cpu")
    if init_cfg.architecture() != cfg.model.architecture() or init_cfg.image_size != cfg.model.image_size:
        accelerator.print(f"stage 2 uses the architecture of its stage-1 model {init_from} (it differs from cfg.model)")
    if init_cfg.image_size != cfg.preprocess.size:
        raise ValueError(f"stage-1 model is {init_cfg.image_size} px but preprocess.size is {cfg.preprocess.size}")
    return unet.train(), scheduler, init_cfg


def train(cfg: DDPMLQTrainConfig, stage: int = 1, init_from: str | Path | None = None) -> Path:
    """Run one DDPM-LQ stage; returns the final model folder (``output_dir/model``, loadable with ``ddpm_lq.load``).

    Args:
        cfg: training settings.
        stage: 1 (all images, unconditional) or 2 (LQ fine-tuning).
        init_from: stage-1 model folder, required for stage 2 unless resuming from a stage-2 checkpoint.

    Raises:
        ValueError: on a bad stage/init_from combination or missing data.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage == 1 and init_from is not None:
        raise ValueError("init_from is for stage 2 (it names the stage-1 model); stage 1 starts from scratch")
    out = Path(cfg.output_dir)
    ckpt = resume_checkpoint(cfg.resume, out)
    if stage == 2 and init_from is None and ckpt is None:
        raise ValueError("stage 2 fine-tunes a stage-1 model: pass init_from=<stage-1 output_dir>/model")

    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )
    set_seed(cfg.seed)  # same initial weights on every process
    model_cfg = cfg.model
    if stage == 2 and init_from is not None:
        unet, noise_scheduler, model_cfg = _load_init(init_from, cfg, accelerator)
    else:
        unet, noise_scheduler = build_unet(model_cfg), build_scheduler(model_cfg)
    set_seed(cfg.seed, device_specific=True)  # different noise/timesteps per process

    ema = None
    if cfg.use_ema:
        ema = EMAModel(
            unet.parameters(), decay=cfg.ema_max_decay, use_ema_warmup=True, inv_gamma=cfg.ema_inv_gamma,
            power=cfg.ema_power, model_cls=type(unet), model_config=unet.config,
        )  # fmt: skip
    dataset, conditional = _training_data(cfg, stage)
    if len(dataset) < cfg.batch_size:  # type: ignore[arg-type]
        raise ValueError(f"stage {stage}: {len(dataset)} training images, fewer than batch_size={cfg.batch_size}")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
    )  # fmt: skip
    # The prepared scheduler steps once per process per optimiser step, hence the num_processes factors.
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max(1, cfg.max_train_steps) * accelerator.num_processes,
    )  # fmt: skip
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    # noise, timesteps and condition dropout: checkpointed RNG on the training device, for exact resumes
    rng = GeneratorState(stream_seed(cfg.seed, "train", accelerator.process_index), accelerator.device)
    global_step = load_checkpoint(accelerator, ckpt, rng, rng_index=0 if ema is None else 1)
    resumed_from = None if ckpt is None else ckpt.name
    if ckpt is not None:
        if ema is not None:
            ema.to(accelerator.device)  # loaded on CPU
        accelerator.print(f"resumed from {ckpt} at step {global_step}")

    if cfg.report_to:
        tracker_cfg = flat_config(cfg.to_dict() | {"stage": stage, "init_from": str(init_from)})
        accelerator.init_trackers(f"ddpm_lq_stage{stage}", config=tracker_cfg)
    batches = infinite_batches(accelerator, loader, global_step * cfg.gradient_accumulation_steps)
    bar = tqdm(
        total=cfg.max_train_steps, initial=global_step, desc=f"DDPM-LQ stage {stage}",
        disable=not cfg.progress or not accelerator.is_local_main_process,
    )  # fmt: skip
    num_t = noise_scheduler.config.num_train_timesteps
    unet.train()
    while global_step < cfg.max_train_steps:
        x, cond = next(batches)
        with accelerator.accumulate(unet):
            gen = rng.generator
            if conditional and cfg.cond_drop_prob > 0:  # classifier-free dropout of the condition
                u = torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=gen.device).to(x.device)
                cond = cond * (u >= cfg.cond_drop_prob).to(cond.dtype)
            noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=torch.float32).to(x.device, x.dtype)
            t = torch.randint(0, num_t, (x.shape[0],), generator=gen, device=gen.device).to(x.device)
            x_t = noise_scheduler.add_noise(x, noise, t)
            pred = unet(model_input(x_t, cond), t).sample
            if model_cfg.prediction_type == "epsilon":
                target = noise
            elif model_cfg.prediction_type == "sample":
                target = x
            else:
                target = noise_scheduler.get_velocity(x, noise, t)
            loss = F.mse_loss(pred.float(), target.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(unet.parameters())
        global_step += 1
        bar.update(1)
        if global_step % max(1, cfg.log_every) == 0 or global_step == cfg.max_train_steps:
            logs = {"loss": float(loss.detach()), "lr": lr_scheduler.get_last_lr()[0]}
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            if not math.isfinite(logs["loss"]):
                raise FloatingPointError(f"DDPM-LQ loss is not finite at step {global_step}")
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            accelerator.log(logs, step=global_step)
        if cfg.checkpointing_steps > 0 and global_step % cfg.checkpointing_steps == 0:
            save_checkpoint(accelerator, out, global_step, cfg.checkpoints_total_limit)
    bar.close()

    accelerator.wait_for_everyone()
    model_dir = out / MODEL_SUBDIR
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.copy_to(final.parameters())  # training is over: the EMA weights are the model
        extra = {
            "stage": stage,
            "init_from": None if init_from is None else str(init_from),
            "global_step": global_step,
            "resumed_from": resumed_from,
            "conditional": conditional,
            "train_config": cfg.to_dict(),
        }
        ddpm_lq.save(model_dir, final, noise_scheduler, model_cfg, extra)
        atomic_write_json(model_dir / PREPROCESS_NAME, cfg.preprocess.to_dict())
    accelerator.end_training()
    return model_dir


# ----------------------------------------------------------------------------------------------- pairs


@torch.no_grad()
def make_pairs(
    model_dir: str | Path,
    hq_dir: str | Path,
    out_dir: str | Path,
    strength: float = 0.3,
    steps: int = 50,
    seed: int = 0,
    batch_size: Annotated[int, Field(ge=1)] = 8,
    device: str | torch.device | None = None,
    disable_tqdm: bool = False,
) -> Path:
    """Degrade every HQ image by SDEdit with a stage-2 DDPM-LQ into a pairs folder (``restoration.pairs`` layout).

    A model trained conditionally (stage 2 on a pairs folder; its saved config records ``conditional: true``)
    gets each HQ image as its condition channel, as in training; an unconditional model gets zeros.

    Args:
        model_dir: stage-2 model folder (``output_dir/model``).
        hq_dir: HQ images to degrade (recursive).
        out_dir: pairs folder: ``hq/NAME.png`` (size) and ``lq/NAME.png`` (size/2), 16-bit, plus ``pairs.json``.
        strength: SDEdit strength in [0, 1] (noise level t = strength * T).
        steps: denoising steps.
        seed: per-image noise derives from (seed, image index), so the batch size
            changes pixels by float rounding only.
        batch_size: images per UNet call.
        device: default CUDA when available.
        disable_tqdm: hide the progress bar.

    Returns:
        ``out_dir``.
    """
    dev = default_device(device)
    unet, scheduler, model_cfg = ddpm_lq.load(model_dir, dev)
    conditional = bool(ddpm_lq.read_extra(model_dir).get("conditional", False))
    pcfg = read_preprocess(model_dir, model_cfg.image_size)
    if pcfg.size % 2:
        raise ValueError(f"image size {pcfg.size} must be even for half-resolution LQ")
    hq_paths = list_images(hq_dir)
    if not hq_paths:
        raise ValueError(f"{hq_dir}: no images")
    names = pair_names(hq_paths, hq_dir)
    ds = ImageFolderDataset(hq_paths, pcfg)
    records: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(ds), batch_size), desc="DDPM-LQ pairs", disable=disable_tqdm):
        idx = list(range(start, min(start + batch_size, len(ds))))
        x = torch.stack([ds[i] for i in idx]).to(dev)
        gens = [torch.Generator().manual_seed(item_seed(seed, i)) for i in idx]
        cond = x if conditional else None  # the clean HQ, windowed and sized as the training pairs' HQ
        lq = downsample2x(sdedit(unet, scheduler, x, strength, steps, generator=gens, condition=cond))
        for k, i in enumerate(idx):
            write_pair(out_dir, names[i], lq[k], x[k])
            records.append(source_record(names[i], hq_paths[i]))
    info = {
        "method": "ddpm-lq-sdedit",
        "model_dir": str(model_dir),
        "conditional": conditional,
        "strength": strength,
        "steps": steps,
        "seed": seed,
        "hq_size": pcfg.size,
        "lq_size": pcfg.size // 2,
        "preprocess": pcfg.to_dict(),
        "pairs": records,
    }
    atomic_write_json(Path(out_dir) / PAIRS_INFO_NAME, info)
    return Path(out_dir)
