"""Train MUNIT-LQ on unpaired HQ (real CXR) and LQ (DRR) folders, then degrade HQ images into (LQ, HQ) pairs.

Training follows MUNIT: Adam(lr 1e-4, betas (0.5, 0.999), weight decay 1e-4), one discriminator update then one
generator update per iteration, learning rate halved every ``lr_step_size`` iterations. It runs under
``accelerate`` (single device or multi-GPU via ``accelerate launch``), logs to TensorBoard, writes
``checkpoint-N`` folders with ``accelerator.save_state`` (oldest pruned past ``checkpoints_total_limit``) and
resumes from the latest one.

Both domains are read at the LQ scale (``preprocess.size``, 512: the longer side, aspect kept; see
``restoration.degrader_data``) and training samples random ``crop_size`` crops, so a step costs the same whatever
the image size. Real images come from the ``train`` part of the patient split only (``real_split``).

``make_pairs`` degrades whole images: HQ at twice the LQ scale (NIH: native 1024), LQ = MUNIT(HQ downsampled to
512), into a pairs folder (layout in ``restoration.pairs``) that DDPM-HQ's trainer reads.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from data.atomic import atomic_write_json
from restoration.degrader_data import REAL_SPLITS, ScaledImages, images_in, index_loader, real_images
from restoration.munit import MUNIT, MUNITConfig
from restoration.pairs import PREPROCESS_NAME, read_preprocess, write_pairs
from restoration.preprocess import PreprocessConfig
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
TRAIN_CONFIG_NAME = "train_config.json"
STYLE_MODES = ("random", "lq-extracted")


# -------------------------------------------------------------------------------------------- training


@dataclass
class MUNITTrainConfig:
    """MUNIT-LQ training run.

    Args:
        hq_dir: folder (or list of folders) of real high-quality CXRs (domain a), searched recursively.
        lq_dir: folder (or list of folders) of DRRs (domain b; 16-bit PNGs), searched recursively.
        output_dir: receives ``checkpoint-N/``, ``logs/`` and the final ``model/``.
        model: MUNIT architecture and loss weights.
        preprocess: windowing, and the LQ scale both domains are read at (``size``: longer side, aspect kept).
        crop_size: side of the random training crops (a multiple of 2**n_downsample).
        real_split: which part of the patient split of ``hq_dir`` to train on ("train"; "all" for your own data).
        batch_size: crops per domain per device per step (MUNIT uses 1 whole image).
        max_train_steps: total iterations (one D and one G update each).
        max_train_seconds: wall-clock budget of this invocation (None: none): the run stops after the step that
            spends it, writes a checkpoint there and saves the model, so a later run with the same settings
            continues from it. The step reached is recorded (``global_step``): rerun with that many steps to repeat.
        lr, adam_beta1, adam_beta2, adam_weight_decay: Adam settings for both optimisers (MUNIT: 1e-4, 0.5, 0.999,
            1e-4).
        lr_step_size, lr_gamma: multiply the learning rate by ``lr_gamma`` every ``lr_step_size`` steps (0: constant).
        augment: small random jitter of the training crops.
        seed: seeds initialisation, data order, crops and style sampling.
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

    hq_dir: str | list[str]
    lq_dir: str | list[str]
    output_dir: str
    model: MUNITConfig = field(default_factory=MUNITConfig)
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(size=512))
    crop_size: Annotated[int, Field(ge=8)] = 128
    real_split: Literal["train", "held_out", "all"] = "train"
    batch_size: Annotated[int, Field(ge=1)] = 4
    max_train_steps: Annotated[int, Field(ge=0)] = 1_000_000
    max_train_seconds: Annotated[float, Field(gt=0)] | None = None
    lr: Annotated[float, Field(gt=0)] = 1e-4
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4  # MUNIT's published default (Adam, L2 weight decay 1e-4)
    lr_step_size: int = 100_000
    lr_gamma: float = 0.5
    augment: bool = False
    seed: Annotated[int, Field(ge=0)] = 0
    mixed_precision: str = "no"
    checkpointing_steps: int = 100
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
        if self.crop_size % m:
            raise ValueError(f"crop_size {self.crop_size} must be a multiple of 2**n_downsample = {m}")
        if self.real_split not in REAL_SPLITS:
            raise ValueError(f"real_split must be one of {REAL_SPLITS}, got {self.real_split!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (nested model/preprocess dicts)."""
        from data.settings import settings_dict

        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MUNITTrainConfig:
        """Inverse of ``to_dict``, strictly validated (data.settings); pre-unification keys still load."""
        from data.settings import load_settings

        d = trainer_settings(d)
        d.pop("num_workers", None)  # crops are cut in the training loop now: no DataLoader workers
        return load_settings(cls, d)


def _sample_grid(model: MUNIT, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """(1, H, 4W) image in [0, 1]: first HQ, its LQ translation, first LQ, its HQ translation."""
    with torch.no_grad():
        g = torch.Generator(device=x_a.device).manual_seed(0)
        x_ab = model.translate(x_a[:1], "a", generator=g)
        x_ba = model.translate(x_b[:1], "b", generator=g)
    row = torch.cat([x_a[:1], x_ab, x_b[:1], x_ba], dim=-1)[0].float()
    return ((row.clamp(-1, 1) + 1) / 2).cpu()


def _step_if_finite(opt: torch.optim.Optimizer) -> bool:
    """Apply the optimiser step unless a gradient is NaN/inf (then drop the gradients): one bad batch must not
    poison the weights (after DDP's all-reduce every process sees the same gradients, so all skip together)."""
    grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
    if grads and not bool(torch.isfinite(torch.stack([g.abs().max() for g in grads])).all()):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


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
    images_a = ScaledImages(real_images(cfg.hq_dir, cfg.real_split, "hq_dir"), cfg.preprocess)
    images_b = ScaledImages(images_in(cfg.lq_dir, "lq_dir"), cfg.preprocess)
    loader_a = index_loader(len(images_a), cfg.batch_size, f"hq_dir ({cfg.real_split} part)")
    loader_b = index_loader(len(images_b), cfg.batch_size, "lq_dir")
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    opt_g = torch.optim.Adam(model.generator_parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.adam_weight_decay)
    opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.adam_weight_decay)
    model, opt_g, opt_d, loader_a, loader_b = accelerator.prepare(model, opt_g, opt_d, loader_a, loader_b)

    ckpt = resume_checkpoint(cfg.resume, out)
    # style codes and crop positions; checkpointed for exact resume
    rng = GeneratorState(stream_seed(cfg.seed, "train", accelerator.process_index))
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
    skipped = 0  # updates dropped for non-finite gradients (this invocation)
    started = time.monotonic()
    while global_step < cfg.max_train_steps:
        idx_a, idx_b = next(it_a), next(it_b)
        x_a = images_a.crops(idx_a.tolist(), cfg.crop_size, rng.generator, cfg.augment).to(accelerator.device)
        x_b = images_b.crops(idx_b.tolist(), cfg.crop_size, rng.generator, cfg.augment).to(accelerator.device)
        lr = cfg.lr * (cfg.lr_gamma ** (global_step // cfg.lr_step_size) if cfg.lr_step_size > 0 else 1.0)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr

        opt_d.zero_grad(set_to_none=True)
        d = model(x_a, x_b, mode="dis", generator=rng.generator)
        accelerator.backward(d["total"])
        skipped_now = not _step_if_finite(opt_d)

        opt_g.zero_grad(set_to_none=True)
        g = model(x_a, x_b, mode="gen", generator=rng.generator)
        accelerator.backward(g["total"])
        skipped_now = not _step_if_finite(opt_g) or skipped_now
        opt_d.zero_grad(set_to_none=True)  # the G step also filled the discriminators' grads: drop them
        skipped += int(skipped_now)

        global_step += 1
        bar.update(1)
        if global_step % max(1, cfg.log_every) == 0 or global_step == cfg.max_train_steps:
            logs = {f"gen/{k}": float(v.detach()) for k, v in g.items()}
            logs |= {f"dis/{k}": float(v.detach()) for k, v in d.items()}
            if not skipped_now and not all(math.isfinite(v) for v in logs.values()):  # float() synced the device
                raise FloatingPointError(f"MUNIT loss is not finite at step {global_step}: {logs}")
            logs["lr"] = lr
            logs["skipped_updates"] = skipped
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
        if global_step < cfg.max_train_steps and out_of_time(accelerator, started, cfg.max_train_seconds):
            accelerator.print(f"time budget of {cfg.max_train_seconds:g} s spent at step {global_step}")
            if not (cfg.checkpointing_steps > 0 and global_step % cfg.checkpointing_steps == 0):
                save_checkpoint(accelerator, out, global_step, cfg.checkpoints_total_limit)
            break
    bar.close()

    accelerator.wait_for_everyone()
    model_dir = out / MODEL_SUBDIR
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save(model_dir)
        atomic_write_json(model_dir / PREPROCESS_NAME, cfg.preprocess.to_dict())
        info = cfg.to_dict() | {"global_step": global_step, "resumed_from": resumed_from, "skipped_updates": skipped,
                                "images": {"hq": len(images_a), "lq": len(images_b)}}  # fmt: skip
        atomic_write_json(model_dir / TRAIN_CONFIG_NAME, info)
    accelerator.end_training()
    return model_dir


# ----------------------------------------------------------------------------------------------- pairs


def make_pairs(
    model_dir: str | Path,
    hq_dir: str | Path | list[str | Path],
    out_dir: str | Path,
    style: Literal["random", "lq-extracted"] = "random",
    seed: int = 0,
    lq_dir: str | Path | list[str | Path] | None = None,
    split: Literal["train", "held_out", "all"] = "train",
    batch_size: Annotated[int, Field(ge=1)] = 1,
    size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """Degrade whole real HQ images with a trained MUNIT into a pairs folder (``restoration.pairs`` layout).

    HQ is each image at twice the LQ scale (NIH: its native 1024), LQ is MUNIT's HQ -> LQ translation of the HQ
    downsampled 2x (512). Resumable: pairs already in ``out_dir`` are kept.

    Args:
        model_dir: folder written by :func:`train` (``output_dir/model``).
        hq_dir: real HQ folder(s) (recursive); only their ``split`` part is degraded.
        out_dir: pairs folder to write.
        style: "random" samples an N(0, I) LQ style per image; "lq-extracted" uses the style of an image of
            ``lq_dir`` chosen at random.
        seed: each pair's style (and LQ choice) derives from (seed, pair name).
        lq_dir: LQ folder(s) for ``style="lq-extracted"``.
        split: "train" (pairs for training), "held_out" (pairs for measurements) or "all".
        batch_size: images per forward pass.
        size: LQ scale (longer side; default: the training preprocess size).
        device: default CUDA when available.
        progress: show a progress bar.

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
    lq_images = ScaledImages(images_in(lq_dir, "lq_dir"), pcfg) if style == "lq-extracted" else None

    def degrade(x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        if lq_images is None:
            styles = torch.cat([model.sample_style(1, dev, torch.Generator().manual_seed(s)) for s in seeds])
        else:
            picks = [int(np.random.default_rng(s).integers(len(lq_images))) for s in seeds]
            styles = torch.cat([_style_of(model, lq_images.array(j), dev) for j in picks])
        return model.translate_hq_to_lq(x, style=styles)

    def style_source(s: int) -> dict[str, Any]:
        if lq_images is None:
            return {"style_source": None}
        return {"style_source": str(lq_images.paths[int(np.random.default_rng(s).integers(len(lq_images)))])}

    info = {"method": "munit-lq", "model_dir": str(model_dir), "style": style}
    m = 2**model.cfg.n_downsample
    return write_pairs(
        hq_dir, out_dir, pcfg, degrade, info, seed, split, m, batch_size, dev, progress, record_extra=style_source
    )


def _style_of(model: MUNIT, img: np.ndarray, dev: torch.device) -> torch.Tensor:
    """LQ style code (1, style_dim) of one whole image at the model scale."""
    from restoration.degrader_data import pad_to_multiple

    x, _ = pad_to_multiple(torch.from_numpy(img)[None, None].to(dev), 2**model.cfg.n_downsample)
    return model.encode_style(x)
