"""Apply a trained DDPM-HQ to DRRs: window, resize to the model's scale, restore + super-resolve, write 16-bit PNGs.

DDPM-HQ learns from whole radiographs resized so their longer side is ``lq_size`` (its training LQ side), so
anatomy has one scale in training. Inputs are resized the same way before restoring (window first, at full
resolution, as in training); the output is ``scale * lq_size`` on its longer side whatever the input size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from restoration.ddpm_hq_sampling import restore
from restoration.pipeline_ddpm_hq import conditioning_image, model_input
from restoration.preprocess import PreprocessConfig, list_images, load_grayscale, model_scale_size

ENHANCE_INFO_NAME = "enhance.json"
__all__ = ["EnhanceRun", "conditioning_image", "enhance_folder", "enhance_image", "model_input"]


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
    lq_size: int | None = None,
) -> np.ndarray:
    """One [0, 1] HxW image -> restored float array in [0, 1] of ``scale`` x its model-input size.

    Args:
        img01: the image in [0, 1].
        unet, scheduler: from ``load_model`` / ``make_scheduler``.
        pcfg: the model's preprocessing (percentile window).
        steps, strength: sampler steps and start (see ``restore``).
        scale: the model's SR factor.
        tile, overlap: tiled sampling in HQ px (memory), see ``restore``.
        seed: noise seed of this image.
        device: where the UNet runs.
        residual_scale: the model's ``DDPMHQConfig.residual_scale``.
        lq_size: resize the input so its longer side is this (the model's ``lq_size``); None keeps the native size.
    """
    lq = torch.from_numpy(model_input(img01, pcfg, lq_size))[None, None].to(device)
    gen = torch.Generator().manual_seed(seed)  # per-image seed: output independent of folder order
    out = restore(unet, scheduler, lq, steps, gen, tile=tile, overlap=overlap, scale=scale, strength=strength,
        residual_scale=residual_scale,
    )  # fmt: skip
    return ((out[0, 0].float().cpu().numpy() + 1.0) / 2.0).clip(0.0, 1.0)


@dataclass
class EnhanceRun:
    """Settings of one ``enhance_folder`` run and each file's sizes (saved as ``enhance.json`` beside the outputs).

    Args:
        model_dir: the DDPM-HQ folder.
        scheduler, steps, strength, seed, tile, overlap: sampler settings (tile None: whole images).
        lq_size: longer side the inputs were resized to (None: native size).
        scale: the model's SR factor.
        files: per input, ``{"input", "output", "input_size", "model_input_size", "output_size"}`` ([h, w]).
    """

    model_dir: str
    scheduler: str
    steps: int
    strength: float
    seed: int
    tile: int | None
    overlap: int
    lq_size: int | None
    scale: int
    files: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


def enhance_folder(
    model_dir: str | Path,
    in_dir: str | Path,
    out_dir: str | Path,
    steps: int | None = None,
    scheduler: str | None = None,
    device: str | torch.device = "cpu",
    tile: int | str | None = "auto",
    progress: bool = True,
    overlap: int = 32,
    seed: int = 0,
    strength: float | None = None,
    input_size: int | str | None = "model",
) -> list[Path]:
    """Restore every image under ``in_dir`` and write 16-bit PNGs with the same relative names, + ``enhance.json``.

    Args:
        model_dir: DDPM-HQ pipeline folder (or the older single-folder format; local only, see ``load_pipeline``).
        in_dir: DRRs (16-bit PNGs from our generator, or any png/jpg/dcm); windowed as the model's preprocess says.
        out_dir: output folder (created); files are written atomically as ``<relative stem>.png``.
        steps, scheduler, strength: sampler settings (ddpm, ddim, dpmsolver++); None = the model's configured
            default sampler and schedule.
        tile: HQ tile side (memory); "auto" = whole images (the default UNet is attention-free, so a whole
            image costs what its tiles would), None the same.
        progress: show a tqdm bar over files.
        seed: every image's noise seed (per image, so outputs do not depend on folder order).
        input_size: longer side inputs are resized to before restoring: "model" = the model's ``lq_size``
            (the scale it learned anatomy at), an int, or None for the native size.

    Returns:
        Written paths, in input order.
    """
    from tqdm.auto import tqdm

    from data.atomic import atomic_write_json
    from data.images import write_png16
    from restoration.pipeline_ddpm_hq import load_pipeline

    pipe = load_pipeline(model_dir, device=device)
    if scheduler is not None:
        pipe.set_sampler(scheduler)
    steps = int(steps if steps is not None else pipe.config.num_inference_steps)
    strength = float(strength if strength is not None else pipe.config.strength)
    tile_px = None if tile == "auto" else tile
    if tile_px is not None and (isinstance(tile_px, bool) or not isinstance(tile_px, int)):
        raise ValueError(f"tile must be an int, 'auto' or None, got {tile!r}")
    lq_size = int(pipe.config.lq_size) if input_size == "model" else input_size
    if lq_size is not None and (isinstance(lq_size, bool) or not isinstance(lq_size, int) or lq_size < 1):
        raise ValueError(f"input_size must be 'model', a positive int or None, got {input_size!r}")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    paths = list_images(in_dir)
    if not paths:
        raise ValueError(f"{in_dir}: no png/jpg/jpeg/dcm images to enhance")
    scale = int(pipe.config.scale)
    run = EnhanceRun(str(model_dir), pipe.sampler_name, steps, strength, seed, tile_px, overlap, lq_size, scale)
    written: list[Path] = []
    for p in tqdm(paths, desc="enhance", disable=not progress):
        img = load_grayscale(p)
        gen = torch.Generator().manual_seed(seed)  # per-image seed: output independent of folder order
        hq = pipe(
            img, steps, strength, gen, tile=tile_px, overlap=overlap, input_size=lq_size
        ).images[0]  # fmt: skip
        dest = (out_dir / p.relative_to(in_dir)).with_suffix(".png")
        written.append(write_png16(dest, np.rint(hq.astype(np.float64) * 65535.0).astype(np.uint16)))
        mh, mw = img.shape if lq_size is None else model_scale_size(*img.shape, lq_size)
        run.files.append({
            "input": p.relative_to(in_dir).as_posix(), "output": dest.relative_to(out_dir).as_posix(),
            "input_size": list(img.shape), "model_input_size": [mh, mw], "output_size": list(hq.shape),
        })  # fmt: skip
    atomic_write_json(out_dir / ENHANCE_INFO_NAME, run.to_dict())
    return written
