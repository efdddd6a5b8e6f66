"""Apply a trained DDPM-HQ to a folder of DRRs: window, restore + 2x super-resolve, write 16-bit PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from restoration.ddpm_hq import load_model, make_scheduler, restore
from restoration.preprocess import PreprocessConfig, list_images, load_grayscale, normalize


def enhance_image(
    img01: np.ndarray,
    unet: torch.nn.Module,
    scheduler: object,
    pcfg: PreprocessConfig,
    steps: int,
    scale: int,
    tile: int | None,
    overlap: int,
    seed: int,
    device: str | torch.device,
    strength: float = 1.0,
    residual_scale: float = 0.0,
) -> np.ndarray:
    """One [0, 1] HxW image -> restored (H*scale)x(W*scale) float array in [0, 1]."""
    lq = torch.from_numpy(normalize(img01, pcfg))[None, None].to(device)  # same percentile window as training
    gen = torch.Generator().manual_seed(seed)  # per-image seed: output independent of folder order
    out = restore(unet, scheduler, lq, steps, gen, tile=tile, overlap=overlap, scale=scale, strength=strength,
        residual_scale=residual_scale,
    )  # fmt: skip
    return ((out[0, 0].float().cpu().numpy() + 1.0) / 2.0).clip(0.0, 1.0)


def enhance_folder(
    model_dir: str | Path,
    in_dir: str | Path,
    out_dir: str | Path,
    steps: int = 50,
    scheduler: str = "ddim",
    device: str | torch.device = "cpu",
    tile: int | str | None = "auto",
    progress: bool = True,
    overlap: int = 32,
    seed: int = 0,
    strength: float = 1.0,
) -> list[Path]:
    """Restore every image under ``in_dir`` to 2x and write 16-bit PNGs with the same relative names.

    Args:
        model_dir: trained DDPM-HQ folder (local only; see ``load_model``).
        in_dir: DRRs (16-bit PNGs from our generator, or any png/jpg/dcm); windowed like ``normalize``.
        out_dir: output folder (created); files are written atomically as ``<relative stem>.png``.
        steps, scheduler: sampler settings (ddpm, ddim, dpmsolver++).
        tile: HQ tile side; "auto" = the model's training HQ size, None = whole image at once.
        progress: show a tqdm bar over files.
        strength: 1.0 = sample from pure noise; <1 = start from the noised upsampled DRR (see ``restore``).

    Returns:
        Written paths, in input order.
    """
    from tqdm.auto import tqdm

    from data.images import write_png16

    unet, cfg = load_model(model_dir, device=device)
    sched = make_scheduler(scheduler, cfg)
    pcfg = PreprocessConfig.from_dict(cfg.preprocess) if cfg.preprocess else PreprocessConfig()
    tile_px = cfg.hq_size if tile == "auto" else tile
    if tile_px is not None and not isinstance(tile_px, int):
        raise ValueError(f"tile must be an int, 'auto' or None, got {tile!r}")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    paths = list_images(in_dir)
    if not paths:
        raise ValueError(f"{in_dir}: no png/jpg/jpeg/dcm images to enhance")
    written: list[Path] = []
    for p in tqdm(paths, desc="enhance", disable=not progress):
        img = load_grayscale(p)
        hq = enhance_image(
            img, unet, sched, pcfg, steps, cfg.scale, tile_px, overlap, seed, device, strength, cfg.residual_scale
        )
        dest = (out_dir / p.relative_to(in_dir)).with_suffix(".png")
        written.append(write_png16(dest, np.rint(hq * 65535.0).astype(np.uint16)))
    return written
