"""Figure: one raw DRR restored by several models / samplers side by side (whole image above, a zoomed crop below).

Usage:
    python benchmarks/restorer_compare.py --drr runs/demo/images_drr/NAME.png \
        --model v0=restoration/pretrained/ddpm-hq-v0 --model "stage 2=runs/restorer/ddpm_hq" \
        --model "stage 2, 1 pass=runs/restorer/ddpm_hq@ddim:2:0.5" \
        --real ../shared/data/cxr/nih-chestxray14/images/00000129_000.png --out docs/images/restorer_compare.png

Each model restores the DRR with its default sampler (or ``@scheduler:steps:strength``) and generator seed 0; the raw
DRR is shown bicubic-upsampled to the output size. Every panel is shown on its own [0, 1] range as written; the crop
(``--crop`` = top, left, side as fractions of the image) is the same region in every panel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _restore(spec: str, img: np.ndarray, seed: int) -> np.ndarray:
    """Restore ``img`` with ``folder[@scheduler:steps:strength]``."""
    import torch

    from restoration.pipeline_ddpm_hq import load_pipeline

    folder, _, sampler = spec.partition("@")
    pipe = load_pipeline(folder)
    kwargs = {}
    if sampler:
        name, steps, strength = sampler.split(":")
        pipe.set_sampler(name)
        kwargs = {"num_inference_steps": int(steps), "strength": float(strength)}
    return pipe(img, generator=torch.Generator().manual_seed(seed), **kwargs).images[0]


def main() -> None:
    """Write the figure."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--drr", type=Path, required=True, help="a raw DRR (images_drr/ of an enhanced generate run)")
    ap.add_argument("--model", action="append", required=True, help="LABEL=FOLDER[@scheduler:steps:strength]")
    ap.add_argument("--real", type=Path, default=None, help="a real radiograph for the last panel")
    ap.add_argument("--crop", type=float, nargs=3, default=(0.30, 0.15, 0.25), help="top left side (fractions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from restoration.preprocess import load_grayscale, resize_image

    drr = load_grayscale(args.drr).astype(np.float32)
    panels: list[tuple[str, np.ndarray]] = []
    for spec in args.model:
        label, _, target = spec.partition("=")
        if not target:
            raise SystemExit(f"--model {spec}: expected LABEL=FOLDER[@scheduler:steps:strength]")
        panels.append((label, _restore(target, drr, args.seed)))
    side = panels[0][1].shape
    panels.insert(0, ("raw DRR (bicubic)", resize_image(drr, side)))
    if args.real is not None:
        panels.append(("real (NIH)", resize_image(load_grayscale(args.real).astype(np.float32), side)))
    top, left, size = (int(round(f * side[0])) for f in args.crop)
    fig, axes = plt.subplots(2, len(panels), figsize=(3 * len(panels), 6.2))
    for k, (label, img) in enumerate(panels):
        axes[0, k].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[0, k].set_title(label, fontsize=9)
        axes[1, k].imshow(img[top : top + size, left : left + size], cmap="gray", vmin=0, vmax=1)
        for ax in axes[:, k]:
            ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
