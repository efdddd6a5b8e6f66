"""DDPM-LQ: a diffusion model of the low-quality (DRR-like) domain, applied to HQ images by SDEdit.

The UNet (diffusers ``UNet2DModel``) sees two channels: the noisy image and a condition image. In our two-stage
training (see ``docs/DDPM_LQ.md``) the condition is zeroed (classifier-free-style "condition dropped"), so both
stages are unconditional: stage 1 learns all radiographs (HQ and LQ), stage 2 fine-tunes on LQ only. HQ -> LQ
is then SDEdit: noise the HQ image to timestep ``strength * T`` and denoise it with the stage-2 model, which keeps
the anatomy (low frequencies survive the noise) and re-synthesises the fine texture in the LQ style.

The default network is compact and attention-free (cost linear in pixels, so crop-trained weights apply to whole
images): the UNet sees a pixel-unshuffled input (``space_to_depth`` 4: a 512 px image becomes 128 px with 2*16
channels) and its output is pixel-shuffled back. It trains on random crops (``image_size`` is the crop side) and
runs SDEdit on whole 512 px images with few steps (strength 0.3, 10 steps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

CONFIG_NAME = "ddpm_lq_config.json"
UNET_SUBDIR = "unet"
SCHEDULER_SUBDIR = "scheduler"
IMAGE_CHANNELS = 1  # the LQ image being denoised
COND_CHANNELS = 1  # the condition image (zeros when unconditional)
DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class DDPMLQConfig:
    """UNet architecture and noise schedule (defaults: a compact attention-free UNet behind a 4x pixel unshuffle).

    ``DDPMLQConfig.paper()`` gives the 6-level 256 px UNet of diffusers' ``train_unconditional.py`` (with
    attention at one level) that earlier versions used; it is for GPUs.

    Args:
        image_size: side of the square training crops in pixels (the UNet's nominal ``sample_size``; whole images
            of any size that is a multiple of ``pad_multiple()`` are denoised at inference).
        space_to_depth: pixel-unshuffle factor in front of the UNet (1: none).
        block_out_channels: channels of each UNet resolution level.
        down_block_types: one of ``DOWN_BLOCKS`` per level (attention blocks are slower but see further).
        up_block_types: one of ``UP_BLOCKS`` per level, deepest first.
        layers_per_block: ResNet layers per level.
        norm_num_groups: GroupNorm groups (must divide every entry of ``block_out_channels``).
        attention_head_dim: channels per attention head.
        mid_attention: self-attention in the UNet's middle block (cost quadratic in pixels: off by default).
        dropout: dropout in the ResNet blocks.
        num_train_timesteps: diffusion steps T.
        beta_schedule: one of ``BETA_SCHEDULES``.
        prediction_type: one of ``PREDICTION_TYPES``.
        clip_sample: clip the predicted clean image to [-1, 1] while sampling.
    """

    image_size: int = 128
    space_to_depth: int = 4
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    norm_num_groups: int = 32
    attention_head_dim: int = 8
    mid_attention: bool = False
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    clip_sample: bool = True

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        n = len(self.block_out_channels)
        if n < 1 or len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                "block_out_channels, down_block_types and up_block_types need the same (>= 1) length, got "
                f"{n}, {len(self.down_block_types)}, {len(self.up_block_types)}"
            )
        for b in self.down_block_types:
            if b not in DOWN_BLOCKS:
                raise ValueError(f"unknown down block {b!r}; allowed: {DOWN_BLOCKS}")
        for b in self.up_block_types:
            if b not in UP_BLOCKS:
                raise ValueError(f"unknown up block {b!r}; allowed: {UP_BLOCKS}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every block_out_channels entry")
        if self.space_to_depth < 1:
            raise ValueError(f"space_to_depth must be >= 1, got {self.space_to_depth}")
        if self.image_size < 1 or self.image_size % self.pad_multiple():
            raise ValueError(
                f"image_size={self.image_size} must be a positive multiple of "
                f"space_to_depth * 2**(levels-1) = {self.pad_multiple()}"
            )
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")

    def pad_multiple(self) -> int:
        """Image sides must be multiples of this (the unshuffle times the UNet's total downsampling)."""
        return self.space_to_depth * 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def paper(cls, **overrides: Any) -> DDPMLQConfig:
        """diffusers' train_unconditional.py UNet at 256 px (6 levels, attention at 16 px and in the middle)."""
        base: dict[str, Any] = {
            "image_size": 256, "space_to_depth": 1, "block_out_channels": (128, 128, 256, 256, 512, 512),
            "down_block_types": ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
            "layers_per_block": 2, "mid_attention": True,
        }  # fmt: skip
        return cls(**(base | overrides))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        from data.settings import settings_dict

        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], section: str = "") -> DDPMLQConfig:
        """Inverse of ``to_dict``, strictly validated (data.settings): unknown keys and wrong types are one line."""
        from data.settings import load_settings

        return load_settings(cls, d, section=section)

    def architecture(self) -> dict[str, Any]:
        """The fields that shape the UNet's weights (a stage-2 run must match its stage-1 model on these)."""
        keys = ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "norm_num_groups",
                "attention_head_dim", "space_to_depth", "mid_attention")  # fmt: skip
        return {k: v for k, v in self.to_dict().items() if k in keys}


def build_unet(cfg: DDPMLQConfig) -> UNet2DModel:
    """Freshly initialised UNet: (noisy image, condition) in, image out, each pixel-unshuffled by space_to_depth."""
    s2 = cfg.space_to_depth**2
    return UNet2DModel(
        sample_size=cfg.image_size // cfg.space_to_depth,
        in_channels=(IMAGE_CHANNELS + COND_CHANNELS) * s2,
        out_channels=IMAGE_CHANNELS * s2,
        add_attention=cfg.mid_attention,
        layers_per_block=cfg.layers_per_block,
        block_out_channels=cfg.block_out_channels,
        down_block_types=cfg.down_block_types,
        up_block_types=cfg.up_block_types,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim,
        dropout=cfg.dropout,
    )


def build_scheduler(cfg: DDPMLQConfig) -> DDPMScheduler:
    """DDPM noise schedule for training and SDEdit sampling."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=cfg.clip_sample,
    )


def model_input(x_t: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
    """Concatenate the noisy image and the condition (zeros when None) along channels."""
    cond = torch.zeros_like(x_t) if condition is None else condition.to(device=x_t.device, dtype=x_t.dtype)
    if cond.shape != x_t.shape:
        raise ValueError(f"condition shape {tuple(cond.shape)} must match the image shape {tuple(x_t.shape)}")
    return torch.cat([x_t, cond], dim=1)


def denoiser_output(
    unet: UNet2DModel, x_t: torch.Tensor, condition: torch.Tensor | None, t: torch.Tensor | int, space_to_depth: int
) -> torch.Tensor:
    """The UNet's prediction for noisy images ``x_t`` (B, 1, H, W) at timestep ``t``, same shape as ``x_t``."""
    inp = model_input(x_t, condition)
    if space_to_depth > 1:
        inp = F.pixel_unshuffle(inp, space_to_depth)
    out = unet(inp, t).sample
    return F.pixel_shuffle(out, space_to_depth) if space_to_depth > 1 else out


def space_to_depth_of(unet: UNet2DModel) -> int:
    """The unshuffle factor a UNet was built for (from its channel counts)."""
    return int(round((unet.config.out_channels / IMAGE_CHANNELS) ** 0.5))


def sdedit_timesteps(strength: float, num_inference_steps: int, num_train_timesteps: int) -> list[int]:
    """Descending timesteps from t_start = round(strength * T) (at most T - 1) down to 0; empty for strength 0."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if strength == 0.0:
        return []
    t_start = min(num_train_timesteps - 1, int(round(strength * num_train_timesteps)))
    n = min(num_inference_steps, t_start + 1)
    ts = np.unique(np.round(np.linspace(0, t_start, n)).astype(np.int64))[::-1]
    return [int(t) for t in ts]


@torch.no_grad()
def sdedit(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    x_hq: torch.Tensor,
    strength: float = 0.3,
    num_inference_steps: int = 10,
    generator: torch.Generator | list[torch.Generator] | None = None,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """HQ -> LQ by SDEdit: noise ``x_hq`` to t = strength * T, then denoise with the (stage-2) DDPM-LQ UNet.

    Args:
        unet: DDPM-LQ UNet (put it in eval mode).
        scheduler: its DDPM scheduler (not modified: a copy is stepped).
        x_hq: (B, 1, H, W) HQ images in [-1, 1]; H and W multiples of the model's ``pad_multiple()``.
        strength: in [0, 1]; 0 returns ``x_hq`` unchanged, 1 starts from (almost) pure noise.
        num_inference_steps: denoising steps spread evenly over [0, t_start].
        generator: RNG (or one per image) for the initial and per-step noise.
        condition: condition channel; None (zeros) for our unconditional stages.

    Returns:
        (B, 1, H, W) LQ-styled images in [-1, 1].
    """
    if x_hq.ndim != 4 or x_hq.shape[1] != IMAGE_CHANNELS:
        raise ValueError(f"x_hq must be (B, {IMAGE_CHANNELS}, H, W), got {tuple(x_hq.shape)}")
    timesteps = sdedit_timesteps(strength, num_inference_steps, scheduler.config.num_train_timesteps)
    if not timesteps:
        return x_hq.clone()
    sched = DDPMScheduler.from_config(scheduler.config)  # own copy: set_timesteps mutates the scheduler
    sched.set_timesteps(timesteps=timesteps)
    dtype = unet.dtype
    x0 = x_hq.to(device=unet.device, dtype=dtype)
    noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=dtype)
    t_start = torch.full((x0.shape[0],), timesteps[0], dtype=torch.long, device=x0.device)
    x = sched.add_noise(x0, noise, t_start)
    s2d = space_to_depth_of(unet)
    for t in sched.timesteps:
        out = denoiser_output(unet, x, condition, t, s2d)
        x = sched.step(out, t, x, generator=generator).prev_sample
    return x.clamp(-1.0, 1.0).to(x_hq.dtype)


def save(
    model_dir: str | Path,
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    cfg: DDPMLQConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``unet/`` and ``scheduler/`` (save_pretrained, safetensors) and ``ddpm_lq_config.json``.

    Args:
        extra: more JSON-serialisable fields stored next to the config (e.g. training provenance).
    """
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(str(d / UNET_SUBDIR), safe_serialization=True)
    scheduler.save_pretrained(str(d / SCHEDULER_SUBDIR))
    payload = {"model": cfg.to_dict(), **(extra or {})}
    (d / CONFIG_NAME).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return d


def load(
    model_dir: str | Path, device: torch.device | str = "cpu"
) -> tuple[UNet2DModel, DDPMScheduler, DDPMLQConfig]:
    """Load (unet in eval mode on ``device``, scheduler, config) written by :func:`save`.

    Raises:
        ValueError: if ``model_dir`` is not a DDPM-LQ model folder.
    """
    d = Path(model_dir)
    for name in (CONFIG_NAME, UNET_SUBDIR, SCHEDULER_SUBDIR):
        if not (d / name).exists():
            raise ValueError(f"{d}: not a DDPM-LQ model folder (missing {name})")
    unet = UNet2DModel.from_pretrained(str(d / UNET_SUBDIR))
    fields = json.loads((d / CONFIG_NAME).read_text(encoding="utf-8"))["model"]
    # folders saved before these fields existed: read them off the network itself
    fields.setdefault("space_to_depth", space_to_depth_of(unet))
    fields.setdefault("mid_attention", bool(unet.config.add_attention))
    cfg = DDPMLQConfig.from_dict(fields)
    scheduler = DDPMScheduler.from_pretrained(str(d / SCHEDULER_SUBDIR))
    return unet.to(device).eval(), scheduler, cfg


def read_extra(model_dir: str | Path) -> dict[str, Any]:
    """The provenance fields stored with the config by :func:`save` (everything but "model")."""
    payload = json.loads((Path(model_dir) / CONFIG_NAME).read_text(encoding="utf-8"))
    return {k: v for k, v in payload.items() if k != "model"}


__all__ = [
    "DDPMLQConfig",
    "build_scheduler",
    "build_unet",
    "denoiser_output",
    "load",
    "model_input",
    "read_extra",
    "save",
    "sdedit",
    "sdedit_timesteps",
]
