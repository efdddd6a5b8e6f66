"""Two-stage DDPM-LQ training (after diffusers' train_unconditional.py) and SDEdit HQ -> LQ pair generation.

Stage 1 learns every radiograph (HQ real CXRs and LQ DRRs) with the condition channel zeroed; stage 2 resumes from
the stage-1 model and fine-tunes on LQ only (optionally conditioned on paired HQ images from a pairs folder, with
classifier-free dropout of the condition). See ``docs/DDPM_LQ.md`` for why. Training runs under ``accelerate``
(mixed precision, gradient accumulation, multi-GPU), keeps an EMA of the weights (diffusers ``EMAModel``), writes
``checkpoint-N`` folders (oldest pruned past the limit), resumes from the latest, and saves the EMA weights with
``save_pretrained`` into ``output_dir/model`` at the end.

Every image is read at the LQ scale (``preprocess.size``, 512: the longer side, aspect kept; see
``restoration.degrader_data``) and training samples random ``crop_size`` crops (the compact UNet is attention-free,
so the crop-trained weights apply to whole images). Real images come from the ``train`` part of the patient split.
``make_pairs`` runs SDEdit on whole images: HQ at twice the LQ scale (NIH: native 1024), LQ = SDEdit of the HQ
downsampled to 512.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from data.atomic import atomic_write_json
from restoration import ddpm_lq
from restoration.ddpm_lq import DDPMLQConfig, build_scheduler, build_unet, denoiser_output, sdedit
from restoration.degrader_data import REAL_SPLITS, ScaledImages, images_in, index_loader, random_crop, real_images
from restoration.pairs import PREPROCESS_NAME, read_preprocess, write_pairs
from restoration.preprocess import (
    PreprocessConfig,
    apply_jitter,
    load_grayscale,
    model_scale_size,
    random_jitter_params,
    resize_image,
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
    out_of_time,
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
        lq_dir: DRR folder (or list of folders; LQ domain, 16-bit PNGs), searched recursively; used by both stages.
        output_dir: receives ``checkpoint-N/``, ``logs/`` and the final ``model/``.
        hq_dir: real-CXR folder (or list; HQ domain); required by stage 1, unused by stage 2.
        pairs_dir: optional stage-2 pairs folder (``lq/``, ``hq/``): trains LQ conditioned on its HQ partner.
        cond_drop_prob: probability of zeroing the condition per sample when ``pairs_dir`` is used.
        model: UNet and noise schedule (stage 2 takes the architecture of its stage-1 model); its ``image_size``
            is set to ``crop_size``.
        preprocess: windowing, and the LQ scale images are read at (``size``: longer side, aspect kept).
        crop_size: side of the random training crops (a multiple of ``model.pad_multiple()``).
        real_split: which part of the patient split of ``hq_dir`` to train on ("train"; "all" for your own data).
        batch_size: crops per device per micro-batch.
        max_train_steps: optimiser steps of this stage.
        max_train_seconds: wall-clock budget of this invocation (None: none): the run stops after the step that
            spends it, writes a checkpoint there and saves the model, so a later run with the same settings
            continues from it. The step reached is recorded (``global_step``): rerun with that many steps to repeat.
        gradient_accumulation_steps: micro-batches per optimiser step.
        lr, adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon: AdamW settings (train_unconditional's, but lr
            5e-4 instead of 1e-4: the compact UNet and CPU-sized runs of ~1000 steps; with cosine decay, clipping).
        lr_scheduler: one of ``LR_SCHEDULERS``; lr_warmup_steps: its warm-up.
        max_grad_norm: gradient clipping norm.
        use_ema, ema_max_decay, ema_inv_gamma, ema_power: EMA of the weights (warm-up schedule); the EMA weights
            are what gets saved at the end.
        augment: small random jitter of the training crops.
        seed: seeds initialisation, data order, crops, noise and timesteps.
        mixed_precision: one of "no", "fp16", "bf16".
        checkpointing_steps: save a checkpoint every this many steps (0: never).
        checkpoints_total_limit: keep at most this many checkpoints (None: all).
        resume: continue from the latest checkpoint in ``output_dir`` (true), start afresh (false) or continue from
            the ``checkpoint-N`` folder named.
        log_every: scalar logging interval in steps.
        report_to: "tensorboard" or None.
        progress: show the progress bar.
    """

    lq_dir: str | list[str]
    output_dir: str
    hq_dir: str | list[str] | None = None
    pairs_dir: str | None = None
    cond_drop_prob: float = 0.1
    model: DDPMLQConfig = field(default_factory=DDPMLQConfig)
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(size=512))
    crop_size: Annotated[int, Field(ge=8)] = 128
    real_split: Literal["train", "held_out", "all"] = "train"
    batch_size: Annotated[int, Field(ge=1)] = 16
    max_train_steps: Annotated[int, Field(ge=0)] = 100_000
    max_train_seconds: Annotated[float, Field(gt=0)] | None = None
    gradient_accumulation_steps: int = 1
    lr: Annotated[float, Field(gt=0)] = 5e-4
    adam_beta1: float = 0.95
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-6
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 100
    max_grad_norm: float = 1.0
    use_ema: bool = True
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    augment: bool = False
    seed: Annotated[int, Field(ge=0)] = 0
    mixed_precision: str = "no"
    checkpointing_steps: int = 100
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
        if self.crop_size % self.model.pad_multiple():
            raise ValueError(
                f"crop_size {self.crop_size} must be a multiple of space_to_depth * 2**(levels-1) = "
                f"{self.model.pad_multiple()}"
            )
        if self.model.image_size != self.crop_size:
            self.model = dataclasses.replace(self.model, image_size=self.crop_size)
        if self.real_split not in REAL_SPLITS:
            raise ValueError(f"real_split must be one of {REAL_SPLITS}, got {self.real_split!r}")
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

        d = trainer_settings(d)
        d.pop("num_workers", None)  # crops are cut in the training loop now: no DataLoader workers
        return load_settings(cls, d)


# --------------------------------------------------------------------------------------------- datasets


class UnconditionalCrops:
    """Crops of whole images at the model scale, each with a zero condition (an unconditional stage)."""

    def __init__(self, images: ScaledImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def crops(
        self, indices: list[int], size: int, generator: torch.Generator, augment: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, zeros), each (B, 1, size, size)."""
        x = self.images.crops(indices, size, generator, augment)
        return x, torch.zeros_like(x)


class PairedCrops:
    """Aligned (LQ, HQ) crops from a pairs folder, both at the LQ scale (the HQ area-downsampled to the LQ's size).

    Pixel values map linearly to [-1, 1]: pairs folders are windowed when written, and a second percentile
    window would shift LQ and HQ differently.
    """

    def __init__(self, pairs_dir: str | Path, size: int) -> None:
        root = Path(pairs_dir)
        if not (root / "lq").is_dir() or not (root / "hq").is_dir():
            raise ValueError(f"{root}: not a pairs folder (needs lq/ and hq/)")
        self.names = sorted(p.name for p in (root / "lq").glob("*.png") if (root / "hq" / p.name).is_file())
        if not self.names:
            raise ValueError(f"{root}: no matching lq/NAME.png and hq/NAME.png")
        self.root, self.size = root, size
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.names)

    def pair(self, i: int) -> np.ndarray:
        """(2, h, w) float32 [-1, 1]: the LQ and its HQ at the LQ scale (longer side ``size``)."""
        if i not in self._cache:
            lq = load_grayscale(self.root / "lq" / self.names[i]) * 2.0 - 1.0
            hq = load_grayscale(self.root / "hq" / self.names[i]) * 2.0 - 1.0
            hw = model_scale_size(lq.shape[0], lq.shape[1], self.size)
            self._cache[i] = np.stack([resize_image(lq, hw), resize_image(hq, hw)])
        return self._cache[i]

    def crops(
        self, indices: list[int], size: int, generator: torch.Generator, augment: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(LQ crops, HQ crops at the same places), each (B, 1, size, size)."""
        out = []
        for i in indices:
            c = random_crop(self.pair(int(i)), size, generator)  # both channels cut at one position
            out.append(apply_jitter(c, random_jitter_params(generator)) if augment else c)
        both = torch.stack(out)
        return both[:, :1], both[:, 1:]


def _training_data(cfg: DDPMLQTrainConfig, stage: int) -> tuple[UnconditionalCrops | PairedCrops, bool]:
    """(crop source of (x, condition), whether the condition is real) for ``stage``."""
    lq_paths = images_in(cfg.lq_dir, "lq_dir")
    if stage == 1:
        if cfg.hq_dir is None:
            raise ValueError("stage 1 trains on HQ and LQ images: set hq_dir")
        hq_paths = real_images(cfg.hq_dir, cfg.real_split, "hq_dir")
        return UnconditionalCrops(ScaledImages(hq_paths + lq_paths, cfg.preprocess)), False
    if cfg.pairs_dir is not None:
        return PairedCrops(cfg.pairs_dir, cfg.preprocess.size), True
    return UnconditionalCrops(ScaledImages(lq_paths, cfg.preprocess)), False


# --------------------------------------------------------------------------------------------- training


def _load_init(init_from: str | Path, cfg: DDPMLQTrainConfig, accelerator: Any) -> tuple[Any, Any, DDPMLQConfig]:
    """Stage-1 UNet/scheduler/config for stage 2; the stage-1 architecture wins over ``cfg.model``."""
    unet, scheduler, init_cfg = ddpm_lq.load(init_from, "cpu")
    if init_cfg.architecture() != cfg.model.architecture():
        accelerator.print(f"stage 2 uses the architecture of its stage-1 model {init_from} (it differs from cfg.model)")
    scale = read_preprocess(init_from, None).size
    if scale != cfg.preprocess.size:
        raise ValueError(f"stage-1 model was trained at scale {scale} px but preprocess.size is {cfg.preprocess.size}")
    if cfg.crop_size % init_cfg.pad_multiple():
        raise ValueError(f"crop_size {cfg.crop_size} must be a multiple of {init_cfg.pad_multiple()} (stage-1 model)")
    return unet.train(), scheduler, dataclasses.replace(init_cfg, image_size=cfg.crop_size)


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
    source, conditional = _training_data(cfg, stage)
    loader = index_loader(len(source), cfg.batch_size, f"stage {stage} training images")
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
    crop_rng = GeneratorState(stream_seed(cfg.seed, "train", accelerator.process_index, 1))  # crops: on the CPU
    accelerator.register_for_checkpointing(crop_rng)
    global_step = load_checkpoint(accelerator, ckpt, rng, rng_index=1 if ema is None else 2)
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
    started = time.monotonic()
    while global_step < cfg.max_train_steps:
        x, cond = source.crops(next(batches).tolist(), cfg.crop_size, crop_rng.generator, cfg.augment)
        x, cond = x.to(accelerator.device), cond.to(accelerator.device)
        with accelerator.accumulate(unet):
            gen = rng.generator
            if conditional and cfg.cond_drop_prob > 0:  # classifier-free dropout of the condition
                u = torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=gen.device).to(x.device)
                cond = cond * (u >= cfg.cond_drop_prob).to(cond.dtype)
            noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=torch.float32).to(x.device, x.dtype)
            t = torch.randint(0, num_t, (x.shape[0],), generator=gen, device=gen.device).to(x.device)
            x_t = noise_scheduler.add_noise(x, noise, t)
            pred = denoiser_output(unet, x_t, cond, t, model_cfg.space_to_depth)
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
        if global_step < cfg.max_train_steps and out_of_time(accelerator, started, cfg.max_train_seconds):
            accelerator.print(f"time budget of {cfg.max_train_seconds:g} s spent at step {global_step}")
            if not (cfg.checkpointing_steps > 0 and global_step % cfg.checkpointing_steps == 0):
                save_checkpoint(accelerator, out, global_step, cfg.checkpoints_total_limit)
            break
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
            "images": len(source),
            "train_config": cfg.to_dict(),
        }
        ddpm_lq.save(model_dir, final, noise_scheduler, model_cfg, extra)
        atomic_write_json(model_dir / PREPROCESS_NAME, cfg.preprocess.to_dict())
    accelerator.end_training()
    return model_dir


# ----------------------------------------------------------------------------------------------- pairs


def make_pairs(
    model_dir: str | Path,
    hq_dir: str | Path | list[str | Path],
    out_dir: str | Path,
    strength: float = 0.3,
    steps: int = 10,
    seed: int = 0,
    split: Literal["train", "held_out", "all"] = "train",
    batch_size: Annotated[int, Field(ge=1)] = 1,
    size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """Degrade whole real HQ images by SDEdit with a stage-2 DDPM-LQ into a pairs folder (``restoration.pairs``).

    HQ is each image at twice the LQ scale (NIH: its native 1024), LQ is SDEdit of the HQ downsampled 2x (512).
    A model trained conditionally (stage 2 on a pairs folder; its saved config records ``conditional: true``) gets
    that downsampled HQ as its condition channel, as in training; an unconditional model gets zeros. Resumable:
    pairs already in ``out_dir`` are kept.

    Args:
        model_dir: stage-2 model folder (``output_dir/model``).
        hq_dir: real HQ folder(s) (recursive); only their ``split`` part is degraded.
        out_dir: pairs folder: ``hq/NAME.png``, ``lq/NAME.png`` (half size), 16-bit, plus ``pairs.json``.
        strength: SDEdit strength in [0, 1] (noise level t = strength * T).
        steps: denoising steps.
        seed: each pair's noise derives from (seed, pair name).
        split: "train" (pairs for training), "held_out" (pairs for measurements) or "all".
        batch_size: images per UNet call.
        size: LQ scale (longer side; default: the training preprocess size).
        device: default CUDA when available.
        progress: show a progress bar.

    Returns:
        ``out_dir``.
    """
    dev = default_device(device)
    unet, scheduler, model_cfg = ddpm_lq.load(model_dir, dev)
    conditional = bool(ddpm_lq.read_extra(model_dir).get("conditional", False))
    pcfg = read_preprocess(model_dir, size)

    def degrade(x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        gens = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
        return sdedit(unet, scheduler, x, strength, steps, generator=gens, condition=x if conditional else None)

    info = {
        "method": "ddpm-lq-sdedit", "model_dir": str(model_dir), "conditional": conditional,
        "strength": strength, "steps": steps,
    }  # fmt: skip
    return write_pairs(hq_dir, out_dir, pcfg, degrade, info, seed, split, model_cfg.pad_multiple(), batch_size,
                       dev, progress)  # fmt: skip
