"""DDPM-HQ: conditional diffusion model that restores a DRR-like LQ radiograph and super-resolves it 2x.

SR3-style conditioning: the UNet sees the noisy HQ estimate concatenated with the bicubically upsampled LQ. The
default ("compact") model is attention-free and works behind a pixel-unshuffle (``space_to_depth`` s): it sees
unshuffle(noisy HQ residual) ⊕ unshuffle(bicubic LQ) as 2·s² channels at 1/s of the HQ side and returns s² channels
that are pixel-shuffled back, so its cost is linear in pixels and crop-trained weights apply to whole images.
The "paper" preset (larger UNet, attention, no unshuffle) is for GPU users.
Model (``build_unet``, ``unet_forward``) and scheduler (``make_scheduler``) live here; the sampling loop
(``restore``, with tiling) is ``restoration/ddpm_hq_sampling.py``; ``restoration/pipeline_ddpm_hq.py`` joins them
as a diffusers pipeline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from pydantic import Field

CONFIG_NAME = "ddpm_hq_config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SCHEDULERS = ("ddpm", "ddim", "dpmsolver++")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
LOSSES = ("l1", "l2")


class ModelNotFoundError(FileNotFoundError):
    """No trained DDPM-HQ model in a folder; ``str(err)`` is one line that says how to train one."""


class ModelFolderError(ValueError):
    """A DDPM-HQ model folder that exists but cannot be used (corrupt weights, wrong config); one-line ``str``."""


@dataclass
class DDPMHQConfig:
    """Architecture + diffusion settings of a DDPM-HQ model (saved as ``ddpm_hq_config.json`` beside the weights).

    Defaults are the compact CPU model (``PRESETS["compact"]``); ``DDPMHQConfig.preset("paper")`` is the paper-size
    UNet with attention for GPU users (about 1 h per 1024² image at 20 steps on 2 CPU cores).

    Args:
        lq_size: the LQ side the model works at (inputs are resized so their longer side is this); HQ side is
            ``lq_size * scale``. Training may use random crops of it.
        scale: super-resolution factor.
        space_to_depth: pixel-unshuffle factor s in front of the UNet (1 = none). The UNet runs at HQ/s with
            2·s² input and s² output channels. Saved configs without it are older models: s = 1.
        block_out_channels: UNet channels per resolution level.
        layers_per_block: ResNet blocks per level.
        attention_levels: per level, whether it has self-attention (default: none).
        mid_attention: self-attention in the UNet's mid block (saved configs without it had it: True).
        norm_num_groups: GroupNorm groups (must divide every channel count).
        num_train_timesteps, beta_schedule, prediction_type: diffusion process (diffusers scheduler names).
        loss: "l1" (SR3/paper) or "l2".
        residual_scale: 0 diffuses the HQ image itself (SR3, the paper). > 0 diffuses the residual
            ``(HQ - bicubic(LQ)) * residual_scale`` instead (SRDiff, Li et al. 2022): the model only has to add
            the missing detail, so a from-scratch model starts at the bicubic baseline instead of at noise.
    """

    lq_size: Annotated[int, Field(ge=1)] = 512
    scale: Annotated[int, Field(ge=1)] = 2
    space_to_depth: Annotated[int, Field(ge=1)] = 4
    block_out_channels: tuple[int, ...] = (64, 96, 128, 128)
    layers_per_block: Annotated[int, Field(ge=1)] = 2
    attention_levels: tuple[bool, ...] | None = None
    mid_attention: bool = False
    norm_num_groups: Annotated[int, Field(ge=1)] = 32
    attention_head_dim: int = 8
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"
    loss: str = "l1"
    residual_scale: float = 4.0
    preprocess: dict[str, Any] = field(default_factory=dict)  # PreprocessConfig.to_dict() of the training data

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.attention_levels is None:
            n = len(self.block_out_channels)
            self.attention_levels = (False,) * n  # attention-free: cost linear in pixels, crops = whole images
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries, "
                f"block_out_channels {len(self.block_out_channels)}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {self.prediction_type!r}: expected one of {', '.join(PREDICTION_TYPES)}"
            )
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        if self.residual_scale < 0:
            raise ValueError(f"residual_scale must be >= 0 (0 = diffuse the image), got {self.residual_scale}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"norm_num_groups {self.norm_num_groups} must divide every block_out_channels {self.block_out_channels}"
            )

    @property
    def hq_size(self) -> int:
        """HQ training side in pixels."""
        return self.lq_size * self.scale

    @property
    def size_multiple(self) -> int:
        """HQ sides must be multiples of this (unshuffle by s, then len(block_out_channels)-1 downsamplings)."""
        return self.space_to_depth * 2 ** (len(self.block_out_channels) - 1)

    @property
    def has_attention(self) -> bool:
        """Whether the UNet has any self-attention (then its cost grows faster than the pixel count)."""
        return self.mid_attention or any(self.attention_levels or ())

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DDPMHQConfig:
        """A named architecture (``PRESETS``: compact, paper) with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown DDPM-HQ preset {name!r}: expected one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        from data.settings import settings_dict

        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], section: str = "") -> DDPMHQConfig:
        """Inverse of ``to_dict``, strictly validated (data.settings): unknown keys and wrong types are one line."""
        from data.settings import load_settings

        if isinstance(d, dict) and "attention_levels" in d and "space_to_depth" not in d:
            # a config saved before space_to_depth existed (saved configs hold every field of their time):
            # that architecture had no unshuffle and mid-block attention
            d = {"space_to_depth": 1, "mid_attention": True, **d}
        return load_settings(cls, d, section=section)

    def save(self, folder: str | Path) -> Path:
        """Write ``ddpm_hq_config.json`` into ``folder`` atomically."""
        from data.atomic import atomic_write_json

        return atomic_write_json(Path(folder) / CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> DDPMHQConfig:
        """Read ``ddpm_hq_config.json`` from ``folder``."""
        return cls.from_dict(json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8")))


PRESETS: dict[str, dict[str, Any]] = {
    # CPU default (BENCHMARKS.md, benchmarks/restorer_speed.py): attention-free, unshuffled by 4
    "compact": {},
    # paper-size UNet at full HQ resolution with attention at the lowest level and in the mid block (GPU)
    "paper": {
        "space_to_depth": 1,
        "block_out_channels": (64, 128, 256, 256),
        "layers_per_block": 2,
        "attention_levels": (False, False, False, True),
        "mid_attention": True,
    },
}


# ---------------------------------------------------------------------------------------------- model


def build_unet(cfg: DDPMHQConfig) -> UNet2DModel:
    """UNet2DModel with 2·s² input channels (unshuffled noisy HQ ⊕ upsampled LQ) and s² output channels."""
    levels = cfg.attention_levels or ()
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels))
    s = cfg.space_to_depth
    return UNet2DModel(
        sample_size=cfg.hq_size // s,
        in_channels=2 * s * s,
        out_channels=s * s,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim,
        dropout=cfg.dropout,
        add_attention=cfg.mid_attention,
    )


def space_to_depth_of(unet: torch.nn.Module) -> int:
    """The unshuffle factor a UNet was built for (its s² output channels; 1 for stand-ins without a config)."""
    config = getattr(getattr(unet, "module", unet), "config", None)  # accelerate/DDP wrap the model in .module
    out = int(getattr(config, "out_channels", 1) or 1)
    s = math.isqrt(out)
    if s * s != out:
        raise ValueError(f"UNet out_channels {out} is not a square s² (space_to_depth)")
    return s


def size_multiple_of(unet: torch.nn.Module) -> int:
    """HQ sides a UNet accepts are multiples of this (s · 2^(levels-1))."""
    config = getattr(getattr(unet, "module", unet), "config")
    return space_to_depth_of(unet) * 2 ** (len(config.block_out_channels) - 1)


def unet_forward(unet: torch.nn.Module, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Model output at HQ resolution (B, 1, H, W) for noisy ``x`` and upsampled ``cond`` (both (B, 1, H, W)).

    With space_to_depth s > 1 both are pixel-unshuffled to s² channels at (H/s, W/s), the UNet returns s² channels
    there and they are pixel-shuffled back; H and W must be multiples of s.
    """
    s = space_to_depth_of(unet)
    dtype = getattr(getattr(unet, "module", unet), "dtype", x.dtype)
    if s > 1:
        inp = torch.cat([F.pixel_unshuffle(x, s), F.pixel_unshuffle(cond, s)], dim=1)
    else:
        inp = torch.cat([x, cond], dim=1)
    out = unet(inp.to(dtype), t).sample
    return F.pixel_shuffle(out, s) if s > 1 else out


def upsample_condition(lq: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Bicubic upsampling of LQ (B, 1, h, w) in [-1, 1] to (B, 1, h*scale, w*scale), clamped."""
    return F.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def make_scheduler(name: str, train_config: DDPMHQConfig | dict[str, Any]) -> SchedulerMixin:
    """Scheduler ``name`` (ddpm, ddim, dpmsolver++) sharing the training noise schedule via ``from_config``."""
    cfg = train_config if isinstance(train_config, DDPMHQConfig) else DDPMHQConfig.from_dict(train_config)
    # x0 lives in [-1, 1] (images) or [-2s, 2s] (residuals of [-1, 1] images scaled by s)
    x0_max = 2.0 * cfg.residual_scale if cfg.residual_scale > 0 else 1.0
    base = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=True,
        clip_sample_range=x0_max,
        timestep_spacing="trailing",  # few-step sampling must start at t = T-1 (pure noise)
    )
    key = name.lower()
    if key == "ddpm":
        return base
    if key == "ddim":
        return DDIMScheduler.from_config(base.config)
    if key in ("dpmsolver++", "dpmsolver"):
        # diffusers' DPM-Solver "thresholding" is *dynamic* thresholding: clamp x0 to the per-image quantile s,
        # then divide by s, with s clamped to [1, sample_max_value]. With sample_max_value=1, s is always 1 and
        # it is a plain clip to [-1, 1], which is right for images. A residual (scaled by residual_scale) may
        # exceed 1, and dividing it by s would shrink the detail it adds, so residual models are not thresholded.
        image_mode = cfg.residual_scale == 0
        return DPMSolverMultistepScheduler.from_config(
            base.config,
            algorithm_type="dpmsolver++",
            solver_order=2,
            # the cosine schedule has alpha_T ~ 0: without clipping lambda, the first x0 estimate explodes
            lambda_min_clipped=-5.1 if cfg.beta_schedule == "squaredcos_cap_v2" else -float("inf"),
            thresholding=image_mode,
            sample_max_value=1.0,
        )
    raise ValueError(f"unknown scheduler {name!r}: expected one of {', '.join(SCHEDULERS)}")


# ---------------------------------------------------------------------------------------------- training


def seeded_noise(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (reproducible across devices), moved to ``like``."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(like.device, like.dtype)


def training_loss(
    unet: UNet2DModel,
    scheduler: SchedulerMixin,
    hq: torch.Tensor,
    lq: torch.Tensor,
    generator: torch.Generator | None = None,
    loss: str = "l1",
    residual_scale: float = 0.0,
) -> torch.Tensor:
    """Diffusion loss for one batch: noise HQ at random t, predict from (noisy HQ ⊕ upsampled LQ).

    Args:
        hq: (B, 1, H, W) targets in [-1, 1].
        lq: (B, 1, H/s, W/s) conditions in [-1, 1].
        loss: "l1" or "l2" between prediction and target (noise, velocity or sample per prediction_type).
        residual_scale: > 0 diffuses ``(hq - upsampled lq) * residual_scale`` (see ``DDPMHQConfig``).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: expected one of {', '.join(LOSSES)}")
    scale = hq.shape[-1] // lq.shape[-1]
    noise = seeded_noise(tuple(hq.shape), generator, hq)
    dev = generator.device if generator is not None else hq.device
    t = torch.randint(0, scheduler.config.num_train_timesteps, (hq.shape[0],), generator=generator, device=dev)
    t = t.to(hq.device)
    cond = upsample_condition(lq, scale).to(hq.dtype)
    x0 = (hq - cond) * residual_scale if residual_scale > 0 else hq
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet_forward(unet, noisy, cond, t)
    ptype = scheduler.config.prediction_type
    if ptype == "epsilon":
        target = noise
    elif ptype == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    elif ptype == "sample":
        target = x0
    else:
        raise ValueError(f"unknown prediction_type {ptype!r}: expected one of {', '.join(PREDICTION_TYPES)}")
    fn = F.l1_loss if loss == "l1" else F.mse_loss
    return fn(pred.float(), target.float())


# ---------------------------------------------------------------------------------------------- save / load


def save_model(folder: str | Path, unet: UNet2DModel, cfg: DDPMHQConfig, ema: Any | None = None) -> Path:
    """Save UNet weights (safetensors; the EMA weights when ``ema`` is given), ``ddpm_hq_config.json`` and the
    training scheduler's config under ``scheduler/``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    try:
        unet.save_pretrained(folder, safe_serialization=True)
    finally:
        if ema is not None:
            ema.restore(unet.parameters())
    cfg.save(folder)
    # The training noise schedule, diffusers-style, so the folder documents itself (make_scheduler rebuilds it).
    make_scheduler("ddpm", cfg).save_pretrained(folder / "scheduler")
    return folder


def load_model(
    folder: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[UNet2DModel, DDPMHQConfig]:
    """Load a trained DDPM-HQ from a local folder (never downloads).

    Raises:
        ModelNotFoundError: one line, when the folder, its config or its weights are missing.
    """
    folder = Path(folder)
    missing = [n for n in (CONFIG_NAME, "config.json", WEIGHTS_NAME) if not (folder / n).is_file()]
    if missing:
        what = "folder does not exist" if not folder.is_dir() else f"missing {', '.join(missing)}"
        raise ModelNotFoundError(
            f"{folder}: no trained DDPM-HQ model ({what}); train one with "
            f"`diffusionxray train ddpm-hq --output-dir {folder} ...` (weights are never downloaded)"
        )
    cfg = DDPMHQConfig.load(folder)
    unet = UNet2DModel.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, torch_dtype=dtype or torch.float32
    )
    unet = unet.to(device or "cpu").eval()
    return unet, cfg
