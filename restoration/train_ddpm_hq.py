"""Train DDPM-HQ on (LQ, HQ) pairs made from real high-quality CXRs (after diffusers' train_unconditional.py).

Accelerate handles devices/mixed precision/checkpoints; ``checkpoint-N`` folders hold model, optimizer, LR
scheduler, EMA and RNG state so an interrupted run resumes exactly (``resume=true``, the default).
Batches are drawn from a seeded, step-indexed permutation instead of a DataLoader so resuming reproduces the
same data order without replaying the loader. Which images train, which validate, and how pairs (whole images or
random crops, one source or several mixed) are made: ``restoration/train_ddpm_hq_data.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from restoration.ddpm_hq import (
    PRESETS,
    DDPMHQConfig,
    build_unet,
    make_scheduler,
    training_loss,
    upsample_condition,
)
from restoration.ddpm_hq_sampling import restore
from restoration.preprocess import PreprocessConfig
from restoration.train_ddpm_hq_data import (  # noqa: F401  (re-exported: the trainer's data side)
    PairSource,
    SplitGroups,
    add_lq_noise,
    batch_indices,
    group_function,
    match_lq_paths,
    mixed_batch,
    mixed_indices,
    training_data,
)
from restoration.training_setup import (
    GeneratorState,
    checkpoint_step,
    flat_config,
    resume_checkpoint,
    save_checkpoint,
    stream_seed,
    trainer_settings,
)

PAIR_SOURCES = ("bicubic", "classical", "pairs_dir")

# Named training configs (``diffusionxray train ddpm-hq --config NAME``; docs/TRAINING.md). Fields not named keep
# the TrainConfig defaults (LQ 512 -> HQ 1024, residual x0 target, EMA, held-out patients excluded).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # the shipped model on one CPU core: the compact UNet on crops 64 -> 128, 8 per step (~0.9 s/step)
    "cpu": {
        "crop_size": 64, "batch_size": 8, "lr": 2e-4, "lr_warmup_steps": 50, "max_train_steps": 1000,
        "checkpointing_steps": 100, "checkpoints_total_limit": 2, "validation_steps": 250, "num_val_images": 8,
        "cpu": True, "log_every": 10, "progress": False,
    },
    # GPU (accelerate launch): the paper-size UNet (DDPMHQConfig.preset("paper"): no unshuffle, attention at the
    # lowest level and in the mid block) on crops 128 -> 256, bf16
    "paper-size": {
        **PRESETS["paper"], "crop_size": 128, "batch_size": 16, "lr": 1e-4, "lr_warmup_steps": 1000,
        "max_train_steps": 100000, "checkpointing_steps": 2000, "checkpoints_total_limit": 3,
        "validation_steps": 2000, "num_val_images": 16, "mixed_precision": "bf16", "log_every": 50,
    },
}  # fmt: skip


def preset_settings(name: str) -> dict[str, Any]:
    """The fields of the named training config (``TRAIN_PRESETS``) as JSON values; one line when unknown."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown DDPM-HQ training config {name!r}: expected a JSON file or one of {', '.join(TRAIN_PRESETS)}")
    return json.loads(json.dumps(TRAIN_PRESETS[name]))  # tuples -> lists, as in a config file
SPLIT_NAME = "split.json"
GROUP_BY = ("auto", "mhh", "stem", "parent")


@dataclass
class TrainConfig:
    """Everything a DDPM-HQ training run needs (saved as ``train_config.json`` in ``output_dir``).

    Args:
        hq_dir: folder of real high-quality CXRs (png/jpg/dcm, recursive); with "pairs_dir" and ``lq_dir``, the
            ``hq/`` of a pairs folder.
        output_dir: final model + ``checkpoint-N`` folders + ``logs`` (TensorBoard).
        pair_source: "bicubic" (paper baseline), "classical" (Real-ESRGAN chain) or "pairs_dir"
            (precomputed LQ images in ``lq_dir`` with the same relative names/stems as the HQ files, or the
            pairs folders ``pairs_dirs``).
        pairs_dirs: pairs folders (``hq/``, ``lq/``, ``pairs.json`` from ``make-pairs``) mixed item by item, an
            equal share of every batch from each (e.g. MUNIT-LQ and DDPM-LQ pairs, 50/50) unless ``pairs_weights``.
        pairs_weights: items per mixing cycle from each of ``pairs_dirs`` (e.g. 3, 1: three MUNIT-LQ pairs for
            every DDPM-LQ pair); empty = one each.
        init_from: a ``DDPMHQPipeline`` folder whose UNet weights start the run (fine-tuning; the architecture
            must be the one configured). A checkpoint to resume from wins over it.
        lq_noise_std: with ``augment``, white Gaussian noise of std U(0, this) ([-1, 1] units) is added to every
            training LQ crop (DRRs are noisy, the degraders' outputs are not: 0.03 covers the DRRs' 0.021).
        exclude_held_out: never train on the held-out patients of ``restoration.splits`` (validate on them).
        crop_size: train on aligned random crops of this LQ side (HQ side ``crop_size * scale``) of whole images
            at ``lq_size``; None, or a crop as large as the image, trains on whole images.
        val_crop_size: LQ side of the fixed validation crops (default ``crop_size``).
        group_by: split groups of the source images (for pairs_dir: each pair's ``hq_source`` in pairs.json):
            "mhh" (patient from data.csv, required), "stem", "parent" folder, "auto" (the patient where a data.csv
            or pairs.json knows it, else the stem). The split is written to ``split.json`` beside the model.
        lq_size, scale: LQ side of the whole training images (the model's working scale) and SR factor
            (HQ side = lq_size * scale).
        space_to_depth, block_out_channels, layers_per_block, attention_levels, mid_attention, norm_num_groups:
            the UNet (``DDPMHQConfig``; defaults: the compact CPU model).
        prediction_type, residual_scale: what the diffusion model learns (see ``DDPMHQConfig``); defaults are the
            data-efficient residual/x0 setting, ``residual_scale=0, prediction_type=epsilon`` is the paper's.
        max_train_steps: optimizer steps; checkpointing_steps/validation_steps in the same unit (the last step is
            always checkpointed, so a rerun of a finished run only rewrites the model folder).
        val_scheduler, val_inference_steps, val_strength: the sampler validated during training and saved as the
            pipeline's default (8 steps at strength 0.5 = 4 UNet evaluations).
        resume: continue from the latest checkpoint in ``output_dir`` (true), start afresh (false) or continue from
            the ``checkpoint-N`` folder named.
        batch_size, lr, progress: images per device per step, peak learning rate, show the progress bar.
    """

    hq_dir: str = ""
    output_dir: str = "runs/ddpm_hq"
    pair_source: str = "bicubic"
    lq_dir: str | None = None
    pairs_dirs: tuple[str, ...] = ()
    pairs_weights: tuple[int, ...] = ()
    init_from: str | None = None
    exclude_held_out: bool = True
    crop_size: Annotated[int, Field(ge=1)] | None = 64
    val_crop_size: Annotated[int, Field(ge=1)] | None = None
    blur_sigma: float = 0.0
    val_fraction: float = 0.1
    split_seed: int = 0
    group_by: str = "auto"
    # preprocessing
    lq_size: Annotated[int, Field(ge=1)] = 512
    scale: int = 2
    low_pct: float = 0.5
    high_pct: float = 99.5
    augment: bool = True
    lq_noise_std: Annotated[float, Field(ge=0)] = 0.0
    # model
    space_to_depth: Annotated[int, Field(ge=1)] = 4
    block_out_channels: tuple[int, ...] = (64, 96, 128, 128)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] | None = None
    mid_attention: bool = False
    norm_num_groups: int = 32
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    # From scratch, diffusing the residual over bicubic with x0 prediction beats the bicubic input within a few
    # hundred CPU steps, where the paper's setting (image, epsilon: residual_scale=0, prediction_type=epsilon)
    # is still far below it (BENCHMARKS.md). The paper's model starts from weights pretrained on ~650k CXRs.
    prediction_type: str = "sample"
    loss: str = "l1"
    residual_scale: float = 4.0
    # optimisation
    batch_size: Annotated[int, Field(ge=1)] = 8
    gradient_accumulation_steps: int = 1
    lr: Annotated[float, Field(gt=0)] = 1e-4
    optimizer: str = "adamw"
    adam_beta1: float = 0.95
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-6
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 100
    max_train_steps: Annotated[int, Field(ge=0)] = 10000
    max_grad_norm: float = 1.0
    use_ema: bool = True
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    mixed_precision: str = "no"
    seed: Annotated[int, Field(ge=0)] = 0
    cpu: bool = False
    # bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume: bool | str = True
    validation_steps: int = 500
    num_val_images: Annotated[int, Field(ge=0)] = 8
    val_inference_steps: Annotated[int, Field(ge=1)] = 8
    val_scheduler: str = "ddim"
    val_strength: Annotated[float, Field(gt=0, le=1)] = 0.5
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.pair_source not in PAIR_SOURCES:
            raise ValueError(f"unknown pair_source {self.pair_source!r}: expected one of {', '.join(PAIR_SOURCES)}")
        self.pairs_dirs = tuple(str(d) for d in self.pairs_dirs)
        if self.pair_source == "pairs_dir" and not (self.lq_dir or self.pairs_dirs):
            raise ValueError(
                "pair_source 'pairs_dir' needs pairs_dirs (pairs folders) or lq_dir (LQ images named like the HQ files)"
            )
        self.pairs_weights = tuple(int(w) for w in self.pairs_weights)
        if self.pairs_weights and (len(self.pairs_weights) != len(self.pairs_dirs) or min(self.pairs_weights) < 1):
            raise ValueError(
                f"pairs_weights {list(self.pairs_weights)}: need one integer >= 1 per pairs_dirs folder ({len(self.pairs_dirs)})"
            )
        if self.pairs_dirs and self.pair_source != "pairs_dir":
            raise ValueError(f"pairs_dirs is set but pair_source is {self.pair_source!r}: set pair_source=pairs_dir")
        if self.group_by not in GROUP_BY:
            raise ValueError(f"unknown group_by {self.group_by!r}: expected one of {', '.join(GROUP_BY)}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: expected one of adam, adamw")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}: expected one of no, fp16, bf16")
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.attention_levels is not None:
            self.attention_levels = tuple(bool(a) for a in self.attention_levels)

    def model_config(self) -> DDPMHQConfig:
        """The DDPMHQConfig this run trains."""
        return DDPMHQConfig(
            lq_size=self.lq_size,
            scale=self.scale,
            space_to_depth=self.space_to_depth,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            attention_levels=self.attention_levels,
            mid_attention=self.mid_attention,
            norm_num_groups=self.norm_num_groups,
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
            loss=self.loss,
            residual_scale=self.residual_scale,
            preprocess=self.preprocess_config().to_dict(),
        )

    def crop(self, val: bool = False) -> int | None:
        """LQ side of the training (or validation) crops; None: whole images (no crop, or one as large as them)."""
        crop = (self.val_crop_size or self.crop_size) if val else self.crop_size
        return crop if crop is not None and crop < self.lq_size else None

    def preprocess_config(self, size: int | None = None) -> PreprocessConfig:
        """HQ preprocessing (or at ``size``)."""
        return PreprocessConfig(size=size or self.lq_size * self.scale, low_pct=self.low_pct, high_pct=self.high_pct)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        from data.settings import settings_dict

        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``, strictly validated (data.settings); pre-unification keys still load."""
        from data.settings import load_settings

        return load_settings(cls, trainer_settings(d))


# ---------------------------------------------------------------------------------------------- training


def validate(
    unet: torch.nn.Module, cfg: TrainConfig, val_hq: torch.Tensor, val_lq: torch.Tensor, device: torch.device
) -> dict[str, float]:
    """Mean PSNR/SSIM of restorations (fixed seed) and of the bicubic-upsampled LQ on held-out pairs."""
    from restoration.evaluate import psnr_ssim, to01

    sched = make_scheduler(cfg.val_scheduler, cfg.model_config())
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "validation"))
    was_training = unet.training
    unet.eval()
    out = restore(
        unet, sched, val_lq.to(device), cfg.val_inference_steps, gen, scale=cfg.scale, strength=cfg.val_strength,
        residual_scale=cfg.residual_scale,
    ).cpu()
    unet.train(was_training)
    base = upsample_condition(val_lq, cfg.scale)
    m = [psnr_ssim(to01(out[i, 0]), to01(val_hq[i, 0])) for i in range(len(out))]
    b = [psnr_ssim(to01(base[i, 0]), to01(val_hq[i, 0])) for i in range(len(out))]
    return {
        "val/psnr": float(np.mean([x[0] for x in m])),
        "val/ssim": float(np.mean([x[1] for x in m])),
        "val/bicubic_psnr": float(np.mean([x[0] for x in b])),
        "val/bicubic_ssim": float(np.mean([x[1] for x in b])),
    }


def check_crop(cfg: TrainConfig) -> None:
    """One line when the HQ crop side does not fit the UNet's downsampling (it must be a multiple of it)."""
    multiple = cfg.model_config().size_multiple
    for name, crop in (("crop_size", cfg.crop()), ("val_crop_size", cfg.crop(val=True))):
        if crop is not None and (crop * cfg.scale) % multiple:
            raise ValueError(
                f"{name} {crop}: the HQ crop side {crop * cfg.scale} must be a multiple of {multiple} for this UNet "
                f"(space_to_depth x 2^(levels-1))"
            )


def save_final(out_dir: Path, unet: torch.nn.Module, cfg: TrainConfig, ema: Any | None) -> Path:
    """The trained model (EMA weights) as a ``DDPMHQPipeline`` folder in ``out_dir`` (model_index.json, unet/,
    scheduler/: what ``DDPMHQPipeline.from_pretrained`` and ``load_pipeline`` read), its default sampler the one
    validated during training."""
    from restoration.pipeline_ddpm_hq import save_pipeline

    return save_pipeline(
        out_dir, unet, cfg.model_config(), ema, sampler=cfg.val_scheduler,
        num_inference_steps=cfg.val_inference_steps, strength=cfg.val_strength,
    )  # fmt: skip


def load_init_weights(unet: torch.nn.Module, folder: str | Path) -> None:
    """Copy the UNet weights of a ``DDPMHQPipeline`` folder (or its ``unet/``) into ``unet``; one line when they do
    not fit the configured architecture."""
    from diffusers import UNet2DModel

    root = Path(folder)
    sub = root / "unet" if (root / "unet").is_dir() else root
    if not (sub / "config.json").is_file():
        raise FileNotFoundError(f"init_from {folder}: not a DDPM-HQ model folder (no unet/config.json)")
    src = UNet2DModel.from_pretrained(str(sub))
    try:
        unet.load_state_dict(src.state_dict(), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"init_from {folder}: its UNet does not match the configured one ({first})") from None


def train(cfg: TrainConfig) -> Path:
    """Train DDPM-HQ; returns ``cfg.output_dir``, a ``DDPMHQPipeline`` folder of the EMA weights (``save_final``)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from data.atomic import atomic_write_json

    out_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with="tensorboard",
        cpu=cfg.cpu,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
    )
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "train_config.json", cfg.to_dict())

    # ---- data: held-out patients never train; fixed validation pairs (crops) from them
    check_crop(cfg)
    data = training_data(cfg)
    if accelerator.is_main_process:
        atomic_write_json(out_dir / SPLIT_NAME, data.split)
    val_hq, val_lq = data.val_hq, data.val_lq

    # ---- model / optimiser / EMA
    set_seed(cfg.seed)
    mcfg = cfg.model_config()
    unet = build_unet(mcfg)
    if cfg.init_from:
        load_init_weights(unet, cfg.init_from)
    noise_scheduler = make_scheduler("ddpm", mcfg)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(
        unet.parameters(),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.max_train_steps * accelerator.num_processes,
    )
    ema = None
    if cfg.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=cfg.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=cfg.ema_inv_gamma,
            power=cfg.ema_power,
            model_cls=type(unet),
            model_config=unet.config,
        )
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    gen_state = GeneratorState(stream_seed(cfg.seed, "train", accelerator.process_index))
    accelerator.register_for_checkpointing(gen_state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
        ema.to(accelerator.device)
    if accelerator.is_main_process:
        accelerator.init_trackers("ddpm_hq", config=flat_config(cfg.to_dict()))

    # ---- resume
    global_step = 0
    path = resume_checkpoint(cfg.resume, out_dir)
    if cfg.resume is not False:
        if path is None:
            accelerator.print(f"no checkpoint in {out_dir}; starting a new training run")
        else:
            accelerator.print(f"resuming from {path}")
            accelerator.load_state(str(path))
            if ema is not None:
                ema.to(accelerator.device)
            global_step = checkpoint_step(path)

    # ---- loop
    progress = tqdm(
        total=cfg.max_train_steps,
        initial=global_step,
        desc="ddpm-hq",
        disable=not cfg.progress or not accelerator.is_local_main_process,
    )
    gen = gen_state.generator
    per_step = cfg.batch_size * accelerator.num_processes
    micro = global_step * cfg.gradient_accumulation_steps
    metrics_path = out_dir / "metrics.jsonl"
    recent: list[float] = []
    t0 = time.time()
    unet.train()
    while global_step < cfg.max_train_steps:
        position = micro * per_step + accelerator.process_index * cfg.batch_size
        items = mixed_indices(
            [len(src) for src in data.sources], cfg.batch_size, position, cfg.seed, list(cfg.pairs_weights) or None
        )
        hq, lq = mixed_batch(data.sources, items, gen, cfg.augment, cfg.crop())
        if cfg.augment:
            lq = add_lq_noise(lq, cfg.lq_noise_std, gen)
        hq, lq = hq.to(accelerator.device), lq.to(accelerator.device)
        with accelerator.accumulate(unet):
            loss = training_loss(
                unet, noise_scheduler, hq, lq, gen, loss=cfg.loss, residual_scale=cfg.residual_scale
            )
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        micro += 1
        recent.append(float(loss.detach().item()))
        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(unet.parameters())
        global_step += 1
        progress.update(1)
        logs: dict[str, float] = {"loss": float(np.mean(recent)), "lr": lr_scheduler.get_last_lr()[0]}
        if ema is not None:
            logs["ema_decay"] = float(ema.cur_decay_value or 0.0)
        recent = []
        progress.set_postfix(loss=f"{logs['loss']:.4f}")
        if global_step % cfg.log_every == 0 or global_step == cfg.max_train_steps:
            accelerator.log(logs, step=global_step)
            if accelerator.is_main_process:
                with open(metrics_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": global_step, "time_s": round(time.time() - t0, 2), **logs}) + "\n")
        if cfg.checkpointing_steps > 0 and (
            global_step % cfg.checkpointing_steps == 0 or global_step == cfg.max_train_steps
        ):
            save_checkpoint(accelerator, out_dir, global_step, cfg.checkpoints_total_limit)  # every process
        if (
            accelerator.is_main_process
            and val_hq is not None
            and cfg.validation_steps > 0
            and (global_step % cfg.validation_steps == 0 or global_step == cfg.max_train_steps)
        ):
            model = accelerator.unwrap_model(unet)
            if ema is not None:  # validate the weights that will be shipped
                ema.store(model.parameters())
                ema.copy_to(model.parameters())
            vlogs = validate(model, cfg, val_hq, val_lq, accelerator.device)
            if ema is not None:
                ema.restore(model.parameters())
            accelerator.log(vlogs, step=global_step)
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": global_step, **vlogs}) + "\n")
            progress.write(
                f"step {global_step}: val PSNR {vlogs['val/psnr']:.2f} dB / SSIM {vlogs['val/ssim']:.4f} "
                f"(bicubic {vlogs['val/bicubic_psnr']:.2f} / {vlogs['val/bicubic_ssim']:.4f})"
            )
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_final(out_dir, accelerator.unwrap_model(unet), cfg, ema)
    accelerator.end_training()
    return out_dir
