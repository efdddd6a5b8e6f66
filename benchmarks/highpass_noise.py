"""Fine-detail (noise) level of image sets at the restorer's LQ scale: robust std of x − Gauss(x, 2 px) in the lungs.

Usage:
    python benchmarks/highpass_noise.py DRRS=runs/restorer/drr/example_pa/images \
        MUNIT-LQ=runs/restorer/pairs_munit_heldout/lq DDPM-LQ=runs/restorer/pairs_ddpm_lq_heldout/lq \
        real=runs/restorer/pairs_munit_heldout/hq

Each image is area-resized to 512², windowed to its p0.5–p99.5 and mapped to [-1, 1] (the DDPM-HQ input scale),
high-passed (minus a Gaussian blur of σ 2 px) and measured in a central chest window (rows 160–352, columns
100–412): the robust std (1.4826 × median absolute value) and the plain std, averaged over at most ``--max-images``
images per set (first by name). This is how ``lq_noise_std`` of DDPM-HQ training was chosen (the DRRs' level vs the
degraders' outputs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WINDOW = (slice(160, 352), slice(100, 412))


def highpass_levels(img01: np.ndarray) -> tuple[float, float]:
    """(robust std, std) of the 2 px high-pass of one image at 512² in [-1, 1], in the central window."""
    from scipy import ndimage

    from restoration.preprocess import resize_image

    a = resize_image(np.asarray(img01, np.float32), (512, 512)).astype(np.float64)
    lo, hi = np.percentile(a, [0.5, 99.5])
    a = np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1) * 2 - 1
    d = (a - ndimage.gaussian_filter(a, 2.0))[WINDOW]
    return float(np.median(np.abs(d)) * 1.4826), float(d.std())


def main() -> None:
    """Print one row per set."""
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="+", help="LABEL=FOLDER")
    ap.add_argument("--max-images", type=int, default=30)
    args = ap.parse_args()
    from restoration.preprocess import list_images, load_grayscale

    print("| set | images | robust high-pass std | high-pass std |\n|---|---:|---:|---:|")
    for spec in args.sets:
        label, _, folder = spec.partition("=")
        paths = sorted(list_images(Path(folder)))[: args.max_images]
        if not paths:
            raise SystemExit(f"{folder}: no images")
        v = np.array([highpass_levels(load_grayscale(p)) for p in paths])
        print(f"| {label} | {len(paths)} | {v[:, 0].mean():.4f} | {v[:, 1].mean():.4f} |")


if __name__ == "__main__":
    main()
