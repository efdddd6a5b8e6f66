"""Tiled vs untiled DDPM-HQ restoration of one radiograph: how close, and whether tile borders show.

GroupNorm normalises each tile by its own statistics, so tiled output is not bit-identical to untiled (tiles blend
in model-output space at every step). This prints, for a model and an image, mean/max |tiled - untiled| on [0, 1],
the same for another noise seed (the scale of "different"), and a seam ratio: the mean |difference of neighbouring
pixels| of (tiled - untiled) across tile-overlap centres over that elsewhere (1 = no seams).

    PYTHONPATH=$PWD python benchmarks/restorer_tiling.py --image CXR.png [--model FOLDER] --tile 512 --overlap 64
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def seam_ratio(diff: np.ndarray, starts: list[int], overlap: int) -> float:
    """Mean |column step| of ``diff`` at the centres of tile overlaps over that at all other columns."""
    step = np.abs(np.diff(diff, axis=1)).mean(axis=0)
    cols = sorted({s + overlap // 2 - 1 for s in starts if s > 0} & set(range(len(step))))
    if not cols:
        return float("nan")
    rest = np.delete(step, cols)
    return float(step[cols].mean() / max(rest.mean(), 1e-12))


def main(argv: list[str] | None = None) -> dict:
    """Restore ``--image`` untiled and tiled with the same noise; print one JSON line."""
    from restoration.ddpm_hq import DDPMHQConfig, build_unet, size_multiple_of
    from restoration.ddpm_hq_sampling import _tile_starts
    from restoration.pipeline_ddpm_hq import DDPMHQPipeline, load_pipeline
    from restoration.pretrained import packaged_model_dir
    from restoration.preprocess import load_grayscale

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True, help="a radiograph (png/jpg/dcm)")
    ap.add_argument("--model", default=None, help="pipeline folder (default: the packaged model; 'random': untrained)")
    ap.add_argument("--tile", type=int, default=512, help="HQ tile side")
    ap.add_argument("--overlap", type=int, default=64, help="HQ tile overlap")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", action="store_true",
                    help="--image is a real HQ radiograph: also PSNR vs it (windowed, at output size) of the untiled "
                    "and tiled restorations and of the bicubic input")  # fmt: skip
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model == "random":
        torch.manual_seed(0)
        cfg = DDPMHQConfig()
        pipe = DDPMHQPipeline.from_model(build_unet(cfg).eval(), cfg)
    else:
        folder = args.model or packaged_model_dir()
        if folder is None:
            sys.exit("no packaged DDPM-HQ model: pass --model FOLDER (or --model random)")
        pipe = load_pipeline(folder)
    img = load_grayscale(args.image)

    def run(seed: int, tile: int | None) -> np.ndarray:
        gen = torch.Generator().manual_seed(seed)
        return pipe(img, generator=gen, tile=tile, overlap=args.overlap).images[0].astype(np.float64)

    full, tiled, other = run(0, None), run(0, args.tile), run(1, None)
    mult = size_multiple_of(pipe.unet)
    tile = max(mult, args.tile // mult * mult)
    overlap = min(args.overlap, tile // 2) // pipe.config.space_to_depth * pipe.config.space_to_depth
    starts = _tile_starts(full.shape[1] + (-full.shape[1]) % mult, tile, max(1, tile - overlap))
    d = tiled - full
    row = {
        "model": str(args.model or "packaged"), "image": args.image, "size": list(full.shape), "tile": tile,
        "overlap": overlap, "mean_abs_tiled_vs_untiled": float(np.abs(d).mean()),
        "max_abs_tiled_vs_untiled": float(np.abs(d).max()),
        "mean_abs_other_seed_vs_untiled": float(np.abs(other - full).mean()),
        "seam_ratio": seam_ratio(d, starts, overlap),
    }  # fmt: skip
    if args.reference:
        from restoration.evaluate import psnr_ssim
        from restoration.pipeline_ddpm_hq import conditioning_image
        from restoration.preprocess import normalize, resize_image

        pcfg = pipe.preprocess_config
        ref = ((resize_image(normalize(img, pcfg), full.shape) + 1.0) / 2.0).clip(0.0, 1.0)
        bicubic = conditioning_image(img, pcfg, int(pipe.config.lq_size), int(pipe.config.scale))
        row["psnr"] = {k: psnr_ssim(v, ref)[0] for k, v in (("bicubic", bicubic), ("untiled", full), ("tiled", tiled))}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
