"""DDPM-HQ sampling loop: restore + super-resolve LQ radiographs with any diffusers scheduler, optionally in tiles.

``DDPMPipeline`` takes no conditioning image, so the loop is written out here, kept apart from the model
(``restoration/ddpm_hq.py``: ``build_unet``, ``make_scheduler``) as in diffusers' model / scheduler / pipeline split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from restoration.ddpm_hq import seeded_noise, size_multiple_of, space_to_depth_of, unet_forward, upsample_condition


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
    """Model output (B, 1, H, W) for the full canvas, computed in overlapping tiles blended in model-output space.

    Tiles are taken in HQ pixels at multiples of the UNet's size multiple (so a tile's pixel-unshuffle grid is the
    whole image's); GroupNorm sees only its tile, so tiled output differs slightly from untiled (tested bound).
    """
    b, _, h, w = x.shape

    def run(xs: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(0, xs.shape[0], max_batch):
            n = min(max_batch, xs.shape[0] - i)
            outs.append(unet_forward(unet, xs[i : i + n], cs[i : i + n], t.expand(n)).float())
        return torch.cat(outs)

    if tile is None or (h <= tile and w <= tile):
        return run(x, cond)
    th, tw = min(tile, h), min(tile, w)
    boxes = [
        (y, xx) for y in _tile_starts(h, th, max(1, th - overlap)) for xx in _tile_starts(w, tw, max(1, tw - overlap))
    ]
    crops = [(x[:, :, y : y + th, xx : xx + tw], cond[:, :, y : y + th, xx : xx + tw]) for (y, xx) in boxes]
    preds = run(torch.cat([c[0] for c in crops]), torch.cat([c[1] for c in crops]))  # tile-major batches
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
        tile: tile side in HQ pixels (rounded down to the UNet size multiple) or None for whole images. The
            default attention-free UNet needs tiles only where memory does (large images on a small GPU).
        overlap: tile overlap in HQ pixels (clipped to tile // 2, rounded down to the space_to_depth factor).
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
    mult = size_multiple_of(unet)  # s * 2^(levels - 1): tiles and the padded canvas keep the unshuffle grid
    s2d = space_to_depth_of(unet)
    cond = upsample_condition(lq.to(device, torch.float32), scale)
    h, w = cond.shape[-2:]
    ph, pw = (-h) % mult, (-w) % mult
    if ph or pw:  # UNet needs multiples of its downsampling factor: reflect-pad, crop at the end
        mode = "reflect" if ph < h and pw < w else "replicate"
        cond = F.pad(cond, (0, pw, 0, ph), mode=mode)
    if tile is not None:
        tile = max(mult, (int(tile) // mult) * mult)
        overlap = max(0, min(int(overlap), tile // 2)) // s2d * s2d  # tile starts stay on the unshuffle grid
    noise = seeded_noise(tuple(cond.shape), generator, cond)
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
