"""DDPM-HQ: conditional diffusion model that restores a DRR-like LQ radiograph and super-resolves it 2x.

SR3-style conditioning: the UNet sees the noisy HQ estimate concatenated with the bicubically upsampled LQ.
Model (``build_unet``), scheduler (``make_scheduler``) and sampling loop (``restore``) are kept separate so any
scheduler can be swapped in at inference time.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

CONFIG_NAME = "ddpm_hq_config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SCHEDULERS = ("ddpm", "ddim", "dpmsolver++")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
LOSSES = ("l1", "l2")


class ModelNotFoundError(FileNotFoundError):
    """No trained DDPM-HQ model in a folder; ``str(err)`` is one line that says how to train one."""


@dataclass
class DDPMHQConfig:
    """Architecture + diffusion settings of a DDPM-HQ model (saved as ``ddpm_hq_config.json`` beside the weights).

    Args:
        lq_size: training LQ crop side; HQ side is ``lq_size * scale``.
        scale: super-resolution factor.
        block_out_channels: UNet channels per resolution level.
        layers_per_block: ResNet blocks per level.
        attention_levels: per level, whether it has self-attention (default: lowest resolution only).
        norm_num_groups: GroupNorm groups (must divide every channel count).
        num_train_timesteps, beta_schedule, prediction_type: diffusion process (diffusers scheduler names).
        loss: "l1" (SR3/paper) or "l2".
        residual_scale: 0 diffuses the HQ image itself (SR3, the paper). > 0 diffuses the residual
            ``(HQ - bicubic(LQ)) * residual_scale`` instead (SRDiff, Li et al. 2022): the model only has to add
            the missing detail, so a from-scratch model starts at the bicubic baseline instead of at noise.
    """

    lq_size: int = 128
    scale: int = 2
    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] | None = None
    norm_num_groups: int = 32
    attention_head_dim: int = 8
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    loss: str = "l1"
    residual_scale: float = 0.0
    preprocess: dict[str, Any] = field(default_factory=dict)  # PreprocessConfig.to_dict() of the training data

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.attention_levels is None:
            n = len(self.block_out_channels)
            self.attention_levels = tuple(i == n - 1 for i in range(n))  # SR3: attention at the lowest resolution
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
        """HQ sides must be multiples of this (UNet downsamples len(block_out_channels)-1 times)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        d["attention_levels"] = list(self.attention_levels or ())
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DDPMHQConfig:
        """Inverse of ``to_dict``; unknown keys are rejected (one line listing the allowed ones) so typos surface."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DDPMHQConfig keys {unknown}: expected some of {', '.join(sorted(names))}")
        return cls(**d)

    def save(self, folder: str | Path) -> Path:
        """Write ``ddpm_hq_config.json`` into ``folder`` atomically."""
        from data.atomic import atomic_write_json

        return atomic_write_json(Path(folder) / CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> DDPMHQConfig:
        """Read ``ddpm_hq_config.json`` from ``folder``."""
        return cls.from_dict(json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------------------- model


def build_unet(cfg: DDPMHQConfig) -> UNet2DModel:
    """UNet2DModel with in_channels=2 (noisy HQ ⊕ upsampled LQ) and out_channels=1."""
    levels = cfg.attention_levels or ()
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels))
    return UNet2DModel(
        sample_size=cfg.hq_size,
        in_channels=2,
        out_channels=1,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim,
        dropout=cfg.dropout,
    )


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


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
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
    noise = _randn(tuple(hq.shape), generator, hq)
    dev = generator.device if generator is not None else hq.device
    t = torch.randint(0, scheduler.config.num_train_timesteps, (hq.shape[0],), generator=generator, device=dev)
    t = t.to(hq.device)
    cond = upsample_condition(lq, scale).to(hq.dtype)
    x0 = (hq - cond) * residual_scale if residual_scale > 0 else hq
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet(torch.cat([noisy, cond], dim=1), t).sample
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


# ---------------------------------------------------------------------------------------------- sampling


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering [0, length) with the last tile flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp_1d(n: int, overlap: int, lo_edge: bool, hi_edge: bool, device: torch.device) -> torch.Tensor:
    """1-D blending window of length n: raised-cosine ramps over ``overlap`` px on the sides shared with neighbours."""
    w = torch.ones(n, dtype=torch.float32)
    if overlap > 0:
        ramp = (0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap)).float()
        if lo_edge:
            w[:overlap] = ramp
        if hi_edge:
            w[n - overlap :] = torch.minimum(w[n - overlap :], ramp.flip(0))
    return w.to(device)


def _predict(
    unet: UNet2DModel,
    x: torch.Tensor,
    cond: torch.Tensor,
    t: torch.Tensor,
    tile: int | None,
    overlap: int,
    max_batch: int,
) -> torch.Tensor:
    """UNet output for the full canvas, computed in overlapping tiles blended in model-output space."""
    dtype = unet.dtype
    b, _, h, w = x.shape
    inp = torch.cat([x, cond], dim=1)

    def run(batch: torch.Tensor) -> torch.Tensor:
        outs = [
            unet(batch[i : i + max_batch].to(dtype), t.expand(min(max_batch, batch.shape[0] - i))).sample.float()
            for i in range(0, batch.shape[0], max_batch)
        ]
        return torch.cat(outs)

    if tile is None or (h <= tile and w <= tile):
        return run(inp)
    th, tw = min(tile, h), min(tile, w)
    boxes = [
        (y, xx) for y in _tile_starts(h, th, max(1, th - overlap)) for xx in _tile_starts(w, tw, max(1, tw - overlap))
    ]
    preds = run(torch.cat([inp[:, :, y : y + th, xx : xx + tw] for (y, xx) in boxes]))  # tile-major batches
    acc = torch.zeros((b, 1, h, w), device=x.device)
    norm = torch.zeros((1, 1, h, w), device=x.device)
    for k, (y, xx) in enumerate(boxes):
        # ramps only where a neighbour tile overlaps; image borders keep full weight
        wy = _ramp_1d(th, overlap, y > 0, y + th < h, x.device)
        wx = _ramp_1d(tw, overlap, xx > 0, xx + tw < w, x.device)
        weight = wy[:, None] * wx[None, :]
        acc[:, :, y : y + th, xx : xx + tw] += preds[k * b : (k + 1) * b] * weight
        norm[:, :, y : y + th, xx : xx + tw] += weight
    return acc / norm


@torch.no_grad()
def restore(
    unet: UNet2DModel,
    scheduler: SchedulerMixin,
    lq: torch.Tensor,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    tile: int | None = None,
    overlap: int = 32,
    scale: int = 2,
    max_batch: int = 8,
    progress: bool = False,
    strength: float = 1.0,
    residual_scale: float = 0.0,
) -> torch.Tensor:
    """Restore + super-resolve LQ (B, 1, h, w) in [-1, 1] to HQ (B, 1, h*scale, w*scale) in [-1, 1].

    Hand-written sampling loop (DDPMPipeline takes no condition image). Noise is drawn once for the whole
    (padded) canvas from ``generator``, so the same seed and settings give the same output. With ``tile``
    (HQ px), the UNet runs on overlapping tiles whose outputs are blended with raised-cosine windows at
    every step, so seams are denoised jointly rather than stitched at the end.

    Args:
        scheduler: from ``make_scheduler``; its state is reset by ``set_timesteps``.
        tile: tile side in HQ pixels (rounded down to the UNet size multiple) or None for whole images.
        overlap: tile overlap in HQ pixels (clipped to tile // 2).
        max_batch: most UNet inputs per forward pass.
        strength: 1.0 starts from pure noise (paper). Below 1, sampling starts from the upsampled LQ
            diffused to the timestep ``strength * T`` and runs only the last ``round(steps * strength)``
            steps (SDEdit / "come-closer-diffuse-faster"): faster and anchored to the LQ's low frequencies,
            which an under-trained model otherwise gets wrong from pure noise.
        residual_scale: the model's ``DDPMHQConfig.residual_scale`` (> 0: the loop denoises a residual
            that is added to the upsampled LQ at the end).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if lq.ndim != 4 or lq.shape[1] != 1:
        raise ValueError(f"expected LQ of shape (B, 1, h, w), got {tuple(lq.shape)}")
    device = unet.device
    mult = 2 ** (len(unet.config.block_out_channels) - 1)
    cond = upsample_condition(lq.to(device, torch.float32), scale)
    h, w = cond.shape[-2:]
    ph, pw = (-h) % mult, (-w) % mult
    if ph or pw:  # UNet needs multiples of its downsampling factor: reflect-pad, crop at the end
        mode = "reflect" if ph < h and pw < w else "replicate"
        cond = F.pad(cond, (0, pw, 0, ph), mode=mode)
    if tile is not None:
        tile = max(mult, (int(tile) // mult) * mult)
        overlap = max(0, min(int(overlap), tile // 2))
    noise = _randn(tuple(cond.shape), generator, cond)
    scheduler.set_timesteps(num_inference_steps, device=device)
    steps = scheduler.timesteps
    if strength < 1.0:
        skip = num_inference_steps - max(1, round(num_inference_steps * strength))
        steps = steps[skip * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):  # multistep solvers track their position explicitly
            scheduler.set_begin_index(skip * scheduler.order)
        start = torch.zeros_like(cond) if residual_scale > 0 else cond  # residual 0 = the upsampled LQ itself
        x = scheduler.add_noise(start, noise, steps[:1].repeat(cond.shape[0]))
    else:
        x = noise * scheduler.init_noise_sigma
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="restore", leave=False)
    for t in steps:
        model_in = scheduler.scale_model_input(x, t)
        out = _predict(unet, model_in, cond, torch.as_tensor(t, device=device), tile, overlap, max_batch)
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    if residual_scale > 0:
        x = cond + x / residual_scale
    return x[:, :, :h, :w].clamp(-1, 1)


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
