"""Restoration metrics and figures: PSNR/SSIM vs reference, nodule contrast preservation, LQ|restored|ref crops.

Only reference-based, weight-free metrics are computed here. LPIPS and FID need pretrained network weights
(AlexNet/VGG, Inception) that would have to be downloaded, so they are deliberately NOT computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from restoration.ddpm_hq import load_model, make_scheduler, restore, upsample_condition
from restoration.degrade import bicubic_degrade
from restoration.preprocess import ImageFolderDataset, PreprocessConfig


def to01(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] tensor/array (any leading dims) -> float64 numpy in [0, 1]."""
    a = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    return np.clip((a.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)


def psnr_ssim(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of two HxW images in [0, 1] (scikit-image, data_range=1); identical -> (inf, 1.0)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    p = np.asarray(pred, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 2:
        raise ValueError(f"psnr_ssim needs two HxW images of equal shape, got {p.shape} and {r.shape}")
    if np.array_equal(p, r):
        psnr = math.inf  # skimage divides by zero MSE with a warning; the answer is inf
    else:
        psnr = float(peak_signal_noise_ratio(r, p, data_range=1.0))
    win = min(7, min(p.shape) - (1 - min(p.shape) % 2))  # SSIM window must be odd and fit the image
    ssim = float(structural_similarity(r, p, data_range=1.0, win_size=max(3, win)))
    return psnr, ssim


def nodule_contrast(image: np.ndarray, footprint: np.ndarray, ring: int | np.ndarray = 3) -> float:
    """Mean inside ``footprint`` minus mean of a surrounding ring (to compare nodule visibility before/after).

    Args:
        image: HxW intensities.
        footprint: HxW boolean nodule mask.
        ring: ring width in pixels (dilation of the footprint minus the footprint), or an explicit HxW ring mask.
    """
    img = np.asarray(image, dtype=np.float64)
    fp = np.asarray(footprint, dtype=bool)
    if fp.shape != img.shape:
        raise ValueError(f"footprint shape {fp.shape} != image shape {img.shape}")
    if not fp.any():
        raise ValueError("nodule_contrast: empty footprint")
    if isinstance(ring, (int, np.integer)):
        from scipy import ndimage

        ring_mask = ndimage.binary_dilation(fp, iterations=int(ring)) & ~fp
    else:
        ring_mask = np.asarray(ring, dtype=bool) & ~fp
    if not ring_mask.any():
        raise ValueError("nodule_contrast: empty ring around the footprint")
    return float(img[fp].mean() - img[ring_mask].mean())


def figure(
    lq: torch.Tensor | np.ndarray,
    restored: torch.Tensor | np.ndarray,
    ref: torch.Tensor | np.ndarray,
    path: str | Path,
    crop: int | None = None,
    zoom: int = 1,
) -> Path:
    """Write a PNG with one row per image: LQ (nearest-upsampled) | restored | reference; inputs in [-1, 1].

    Args:
        lq, restored, ref: (B, 1, h, w)/(B, 1, H, W) batches or single HxW images.
        crop: optional central crop side (HQ px) to show detail.
        zoom: integer nearest-neighbour enlargement of the whole figure (small images stay inspectable).
    """
    from data.atomic import atomic_write_bytes
    from data.images import encode_png

    def rows(x: torch.Tensor | np.ndarray) -> np.ndarray:
        a = to01(x)
        return a.reshape(-1, *a.shape[-2:])

    lqs, outs, refs = rows(lq), rows(restored), rows(ref)
    H, W = refs.shape[-2:]
    tiles = []
    for a, b, c in zip(lqs, outs, refs):
        a_up = np.kron(a, np.ones((H // a.shape[0], W // a.shape[1])))  # nearest: show LQ pixels honestly
        row = [a_up, b, c]
        if crop:
            t, l = (H - crop) // 2, (W - crop) // 2
            row = [r[t : t + crop, l : l + crop] for r in row]
        sep = np.ones((row[0].shape[0], 2))
        tiles.append(np.concatenate([row[0], sep, row[1], sep, row[2]], axis=1))
        tiles.append(np.ones((2, tiles[-1].shape[1])))
    grid = np.concatenate(tiles[:-1], axis=0)
    if zoom > 1:
        grid = np.kron(grid, np.ones((zoom, zoom)))
    img = Image.fromarray(np.rint(grid * 255).astype(np.uint8))
    return atomic_write_bytes(path, encode_png(img))


def evaluate_model(
    model_dir: str | Path,
    hq_paths: Sequence[str | Path],
    degrade: Callable[[torch.Tensor], torch.Tensor] | Sequence[str | Path] | None = None,
    steps: int = 50,
    scheduler: str = "ddim",
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 8,
    figure_path: str | Path | None = None,
    strength: float = 1.0,
) -> dict[str, Any]:
    """PSNR/SSIM of DDPM-HQ restorations vs references, next to the bicubic-upsampled LQ baseline.

    LPIPS/FID are not computed: they need downloaded pretrained weights.

    Args:
        model_dir: trained DDPM-HQ folder (see ``load_model``).
        hq_paths: reference HQ images (preprocessed to the model's HQ size like in training).
        degrade: HQ batch -> LQ batch function (default bicubic), or LQ image paths paired with ``hq_paths``.
        steps, scheduler, strength: sampler settings (``make_scheduler`` names; see ``restore``).
        figure_path: optional PNG of the first images (LQ | restored | reference).

    Returns:
        {"n", "model": {"psnr", "ssim"}, "bicubic": {...}, "per_image": [...], ...}.
    """
    unet, cfg = load_model(model_dir, device=device)
    sched = make_scheduler(scheduler, cfg)
    pcfg = PreprocessConfig.from_dict({**cfg.preprocess, "size": cfg.hq_size})
    hq_ds = ImageFolderDataset(hq_paths, pcfg)
    lq_ds = None
    if degrade is not None and not callable(degrade):
        lq_ds = ImageFolderDataset(list(degrade), PreprocessConfig.from_dict({**cfg.preprocess, "size": cfg.lq_size}))
        if len(lq_ds) != len(hq_ds):
            raise ValueError(f"{len(lq_ds)} LQ paths for {len(hq_ds)} HQ paths")
    fn = degrade if callable(degrade) else (lambda x: bicubic_degrade(x, cfg.scale))
    gen = torch.Generator().manual_seed(seed)
    per_image: list[dict[str, Any]] = []
    fig_batch = None
    for start in range(0, len(hq_ds), batch_size):
        idx = range(start, min(len(hq_ds), start + batch_size))
        hq = torch.stack([hq_ds[i] for i in idx])
        lq = torch.stack([lq_ds[i] for i in idx]) if lq_ds is not None else fn(hq)
        out = restore(unet, sched, lq.to(device), steps, gen, scale=cfg.scale, strength=strength,
            residual_scale=cfg.residual_scale,
        ).cpu()  # fmt: skip
        base = upsample_condition(lq, cfg.scale)
        for j, i in enumerate(idx):
            ref = to01(hq[j, 0])
            mp, ms = psnr_ssim(to01(out[j, 0]), ref)
            bp, bs = psnr_ssim(to01(base[j, 0]), ref)
            per_image.append(
                {"path": str(hq_ds.paths[i]), "psnr": mp, "ssim": ms, "bicubic_psnr": bp, "bicubic_ssim": bs}
            )
        if fig_batch is None:
            fig_batch = (lq[:4], out[:4], hq[:4])
    if figure_path is not None and fig_batch is not None:
        figure(*fig_batch, figure_path, zoom=max(1, 256 // cfg.hq_size))

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in per_image]))

    return {
        "n": len(per_image),
        "scheduler": scheduler,
        "steps": steps,
        "strength": strength,
        "steps_run": max(1, round(steps * strength)),
        "model": {"psnr": mean("psnr"), "ssim": mean("ssim")},
        "bicubic": {"psnr": mean("bicubic_psnr"), "ssim": mean("bicubic_ssim")},
        "per_image": per_image,
    }
