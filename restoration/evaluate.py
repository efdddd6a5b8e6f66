"""Restoration metrics and figures: PSNR/SSIM vs reference, nodule contrast preservation, LQ|restored|ref crops.

Only reference-based, weight-free metrics are computed here. LPIPS and FID need pretrained network weights
(AlexNet/VGG, Inception) that would have to be downloaded, so they are deliberately NOT computed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from restoration.ddpm_hq import SCHEDULERS, make_scheduler, unet_forward, upsample_condition
from restoration.ddpm_hq_sampling import restore
from restoration.degrade import bicubic_degrade
from restoration.low_frequency_anchor import anchor_low_frequencies
from restoration.pairs import in_pairs_folder
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


# The sampler table of BENCHMARKS.md: UNet evaluations 1000 (DDPM), 50, 20, 10, 4, 1 from pure noise, plus the
# model's own default (a few steps from the noised bicubic start) and DPM-Solver++ at 4
SAMPLER_TABLE = ("ddpm:1000", "ddim:50", "ddim:20", "ddim:10", "ddim:4", "dpmsolver++:4", "ddim:1", "default")


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler setting to evaluate: scheduler name, steps, strength (see ``restore``).

    Args:
        scheduler: one of ``SCHEDULERS`` (ddpm, ddim, dpmsolver++), or "default": the model folder's configured
            sampler, steps and strength (resolved by ``evaluate_samplers``).
        steps: sampler steps (before ``strength`` shortens the run).
        strength: 1.0 starts from pure noise; below 1 from the noised bicubic upsample.
    """

    scheduler: str
    steps: int
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.scheduler.lower() not in (*SCHEDULERS, "dpmsolver", "default"):  # dpmsolver: alias of dpmsolver++
            raise ValueError(f"unknown scheduler {self.scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
        if self.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")

    @classmethod
    def parse(cls, text: str, strength: float = 1.0) -> SamplerSpec:
        """``scheduler:steps[:strength]`` (e.g. ``ddim:20``, ``dpmsolver++:20:0.5``) or ``default`` (the model's)."""
        if text.strip().lower() == "default":
            return cls("default", 1, 1.0)
        parts = text.strip().split(":")
        if len(parts) not in (2, 3):
            raise ValueError(
                f"sampler {text!r}: expected scheduler:steps[:strength] (e.g. ddim:20 or ddpm:1000) or default"
            )
        try:
            return cls(parts[0].lower(), int(parts[1]), float(parts[2]) if len(parts) == 3 else strength)
        except ValueError as err:
            raise ValueError(f"sampler {text!r}: {err}") from err

    @property
    def label(self) -> str:
        """Short name for tables: ``ddim:20`` or ``ddim:20:0.5``."""
        return f"{self.scheduler}:{self.steps}" + ("" if self.strength == 1.0 else f":{self.strength:g}")

    @property
    def steps_run(self) -> int:
        """UNet evaluations per image (``restore`` runs the last ``round(steps * strength)`` steps)."""
        return max(1, round(self.steps * self.strength))


def _sync(device: str | torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings cover it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_samplers(
    model_dir: str | Path,
    hq_paths: Sequence[str | Path],
    samplers: Sequence[SamplerSpec],
    degrade: Callable[[torch.Tensor], torch.Tensor] | Sequence[str | Path] | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 8,
    figure_path: str | Path | None = None,
    prewindowed: bool | None = None,
    crop: int | None = None,
    whole_image_timing: bool = False,
    max_timed_evals: int = 10,
) -> dict[str, Any]:
    """PSNR/SSIM and wall seconds of DDPM-HQ under each sampler, on the same pairs, next to the bicubic baseline.

    The model and the pairs are loaded once; every sampler restores the same LQ images from the same seed, and
    only restoring is timed (one untimed warm-up forward pass first), so speed/quality trade-offs compare
    like with like (e.g. DDPM-1000 vs DDIM-20 vs DPM-Solver++-20). LPIPS/FID are not computed: they need
    downloaded pretrained weights.

    Args:
        model_dir: DDPM-HQ pipeline folder (see ``load_pipeline``; the older single-folder format too).
        hq_paths: reference HQ images (preprocessed to the model's HQ size like in training).
        samplers: settings to evaluate, in order.
        degrade: HQ batch -> LQ batch function (default bicubic), or LQ image paths paired with ``hq_paths``.
        batch_size: images per ``restore`` call.
        figure_path: optional PNG of the first images (LQ | restored | reference) under the first sampler.
        prewindowed: whether the image files are already windowed (pairs folders), so they are mapped linearly
            instead of windowed again; None decides per side (HQ, LQ) by whether the files lie in a pairs folder.
        crop: measure quality on one fixed crop per image (HQ side ``crop`` px, at a seeded position, cut from
            the whole image at the model's scale after degrading it; the LQ crop is the same region), so that
            1000-step DDPM is affordable on a CPU. None: whole images.
        whole_image_timing: also time each sampler on the first whole image (at the model's HQ size):
            measured when it needs at most ``max_timed_evals`` UNet evaluations, else estimated as evaluations
            x the measured seconds of one whole-image forward pass (``whole_image.measured`` says which).

    Returns:
        {"n", "crop", "bicubic": {"psnr", "ssim"}, "runs": [one ``evaluate_model``-style result per sampler]}.
    """
    from restoration.pipeline_ddpm_hq import load_pipeline

    if not samplers:
        raise ValueError("evaluate_samplers needs at least one sampler (e.g. SamplerSpec('ddim', 20))")
    pipe = load_pipeline(model_dir, device=device)
    unet, cfg = pipe.unet, pipe.model_config()
    anchor = float(pipe.config.anchor_sigma)  # part of the model's output: applied under every sampler
    default = SamplerSpec(pipe.sampler_name, int(pipe.config.num_inference_steps), float(pipe.config.strength))
    samplers = [default if sp.scheduler == "default" else sp for sp in samplers]
    hq_paths = [Path(p) for p in hq_paths]
    hq_pre = all(in_pairs_folder(p) for p in hq_paths) if prewindowed is None else prewindowed
    hq_cfg = PreprocessConfig.from_dict({**cfg.preprocess, "size": cfg.hq_size})
    hq_ds = ImageFolderDataset(hq_paths, hq_cfg, prewindowed=hq_pre)
    lq_ds = None
    if degrade is not None and not callable(degrade):
        lq_paths = [Path(p) for p in degrade]
        lq_pre = all(in_pairs_folder(p) for p in lq_paths) if prewindowed is None else prewindowed
        lq_cfg = PreprocessConfig.from_dict({**cfg.preprocess, "size": cfg.lq_size})
        lq_ds = ImageFolderDataset(lq_paths, lq_cfg, prewindowed=lq_pre)
        if len(lq_ds) != len(hq_ds):
            raise ValueError(f"{len(lq_ds)} LQ paths for {len(hq_ds)} HQ paths")
    fn = degrade if callable(degrade) else (lambda x: bicubic_degrade(x, cfg.scale))
    batches: list[tuple[range, torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(hq_ds), batch_size):
        idx = range(start, min(len(hq_ds), start + batch_size))
        hq = torch.stack([hq_ds[i] for i in idx])
        batches.append((idx, hq, torch.stack([lq_ds[i] for i in idx]) if lq_ds is not None else fn(hq)))
    whole_lq = batches[0][2][:1]
    if crop is not None:
        batches = [_crop_batch(idx, hq, lq, crop, cfg.scale, cfg.size_multiple, seed) for idx, hq, lq in batches]
    refs = {i: to01(hq[j, 0]) for idx, hq, _ in batches for j, i in enumerate(idx)}
    base = {}
    for idx, _, lq in batches:
        up = upsample_condition(lq, cfg.scale)
        base |= {i: psnr_ssim(to01(up[j, 0]), refs[i]) for j, i in enumerate(idx)}
    with torch.no_grad():  # warm-up: first-call allocations/kernel selection must not count against sampler 1
        _, _, lq0 = batches[0]
        cond = upsample_condition(lq0[:1].to(device), cfg.scale)
        unet_forward(unet, cond, cond, torch.zeros(1, dtype=torch.long, device=device))
        _sync(device)

    runs = []
    for k, spec in enumerate(samplers):
        sched = make_scheduler(spec.scheduler, cfg)
        gen = torch.Generator().manual_seed(seed)
        per_image: list[dict[str, Any]] = []
        restore_s = 0.0
        for idx, hq, lq in batches:
            _sync(device)
            t0 = time.perf_counter()
            out = restore(
                unet, sched, lq.to(device), spec.steps, gen, scale=cfg.scale, strength=spec.strength,
                residual_scale=cfg.residual_scale,
            ).cpu()  # fmt: skip
            dt = time.perf_counter() - t0
            restore_s += dt
            restored = [to01(out[j, 0]) for j in range(len(idx))]
            if anchor > 0:  # pairs are in the model's windowed space already: anchor to the bicubic-upsampled LQ
                up = upsample_condition(lq, cfg.scale)
                restored = [anchor_low_frequencies(r, to01(up[j, 0]), anchor) for j, r in enumerate(restored)]
            for j, i in enumerate(idx):
                mp, ms = psnr_ssim(restored[j], refs[i])
                bp, bs = base[i]
                per_image.append({
                    "path": str(hq_ds.paths[i]), "psnr": mp, "ssim": ms, "bicubic_psnr": bp, "bicubic_ssim": bs,
                    "seconds": dt / len(idx),
                })  # fmt: skip
            if k == 0 and figure_path is not None and idx.start == 0:
                shown = torch.from_numpy(np.stack(restored[:4]).astype(np.float32))[:, None] * 2.0 - 1.0
                figure(lq[:4], shown, hq[:4], figure_path, zoom=max(1, 256 // hq.shape[-1]))
        runs.append(_summary(spec, per_image, restore_s))
    if whole_image_timing:
        _time_whole_images(unet, cfg, whole_lq.to(device), samplers, runs, seed, device, max_timed_evals)
    return {"n": len(refs), "crop": crop, "anchor_sigma": anchor, "bicubic": runs[0]["bicubic"], "runs": runs}


def _crop_batch(
    idx: range, hq: torch.Tensor, lq: torch.Tensor, crop: int, scale: int, multiple: int, seed: int
) -> tuple[range, torch.Tensor, torch.Tensor]:
    """One fixed crop per image (seeded by ``seed`` and the image index), HQ side ``crop``, LQ the same region."""
    H, W = hq.shape[-2:]
    if crop < multiple or crop % multiple or crop > min(H, W):
        raise ValueError(f"crop {crop}: must be a multiple of {multiple} between {multiple} and {min(H, W)} (HQ px)")
    hqs, lqs = [], []
    for j, i in enumerate(idx):
        rng = np.random.default_rng([seed, i])
        y = int(rng.integers(0, (H - crop) // scale + 1)) * scale  # on the LQ grid, so the LQ crop is exact
        x = int(rng.integers(0, (W - crop) // scale + 1)) * scale
        hqs.append(hq[j, :, y : y + crop, x : x + crop])
        lqs.append(lq[j, :, y // scale : (y + crop) // scale, x // scale : (x + crop) // scale])
    return idx, torch.stack(hqs), torch.stack(lqs)


def _time_whole_images(
    unet: torch.nn.Module,
    cfg: Any,
    lq: torch.Tensor,
    samplers: Sequence[SamplerSpec],
    runs: list[dict[str, Any]],
    seed: int,
    device: str | torch.device,
    max_timed_evals: int,
) -> None:
    """Add ``whole_image: {"size", "seconds", "measured"}`` to every run (see ``evaluate_samplers``)."""
    cond = upsample_condition(lq, cfg.scale)
    t = torch.zeros(1, dtype=torch.long, device=cond.device)
    with torch.no_grad():
        unet_forward(unet, cond, cond, t)  # warm-up at this size
        _sync(device)
        t0 = time.perf_counter()
        unet_forward(unet, cond, cond, t)
        _sync(device)
    per_forward = time.perf_counter() - t0
    for spec, run in zip(samplers, runs):
        if spec.steps_run <= max_timed_evals:
            _sync(device)
            t0 = time.perf_counter()
            restore(unet, make_scheduler(spec.scheduler, cfg), lq, spec.steps, torch.Generator().manual_seed(seed),
                    scale=cfg.scale, strength=spec.strength, residual_scale=cfg.residual_scale)  # fmt: skip
            _sync(device)
            seconds, measured = time.perf_counter() - t0, True
        else:
            seconds, measured = spec.steps_run * per_forward, False
        run["whole_image"] = {"size": list(cond.shape[-2:]), "seconds": seconds, "measured": measured,
                              "seconds_per_forward": per_forward}  # fmt: skip


def _summary(spec: SamplerSpec, per_image: list[dict[str, Any]], restore_s: float) -> dict[str, Any]:
    """Mean metrics and timings of one sampler run."""

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in per_image]))

    n = len(per_image)
    return {
        "n": n,
        "sampler": spec.label,
        "scheduler": spec.scheduler,
        "steps": spec.steps,
        "strength": spec.strength,
        "steps_run": spec.steps_run,
        "model": {"psnr": mean("psnr"), "ssim": mean("ssim")},
        "bicubic": {"psnr": mean("bicubic_psnr"), "ssim": mean("bicubic_ssim")},
        "seconds": {"total": restore_s, "per_image": restore_s / max(1, n)},
        "per_image": per_image,
    }


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
    prewindowed: bool | None = None,
) -> dict[str, Any]:
    """PSNR/SSIM and wall seconds of DDPM-HQ restorations under one sampler (see ``evaluate_samplers``).

    Args:
        model_dir, hq_paths, degrade, seed, device, batch_size, figure_path, prewindowed: see ``evaluate_samplers``.
        steps, scheduler, strength: sampler settings (``make_scheduler`` names; see ``restore``).

    Returns:
        {"n", "sampler", "scheduler", "steps", "strength", "steps_run", "model": {"psnr", "ssim"},
        "bicubic": {...}, "seconds": {"total", "per_image"}, "per_image": [...]}.
    """
    spec = SamplerSpec(scheduler, steps, strength)
    result = evaluate_samplers(
        model_dir, hq_paths, [spec], degrade, seed=seed, device=device, batch_size=batch_size,
        figure_path=figure_path, prewindowed=prewindowed,
    )  # fmt: skip
    return result["runs"][0]
