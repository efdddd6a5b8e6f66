"""Anchor stored restorer outputs after the fact, as ``DDPMHQPipeline(anchor_sigma=σ)`` would have (for comparing σ).

    python benchmarks/anchor_outputs.py ENHANCED_DIR --raw RAW_DIR [--raw RAW_DIR ...] --sigma 3 --out OUT_DIR

ENHANCED_DIR holds an unanchored model's outputs (``diffusionxray enhance``: the model's windowed space); each is
matched by file name to its input DRR in a RAW_DIR, un-windowed with the DRR's percentile window and given the
DRR's Gaussian(σ) low-pass (``restoration.low_frequency_anchor.anchored_output``, the pipeline's own function).
Used for the anchoring table of BENCHMARKS.md ("The default restorer (v1)"); then ``evaluate-realism OUT_DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    """Write one anchored 16-bit PNG per enhanced image."""
    from data.images import write_png16
    from restoration.low_frequency_anchor import anchored_output
    from restoration.preprocess import PreprocessConfig, list_images, load_grayscale, percentile_window

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("enhanced", type=Path, help="an unanchored restorer's outputs (enhance)")
    ap.add_argument("--raw", type=Path, action="append", required=True, help="folder of the input DRRs (repeatable)")
    ap.add_argument("--sigma", type=float, default=3.0, help="Gaussian σ in output px")
    ap.add_argument("--low-pct", type=float, default=0.5, help="the model's window (its preprocess low_pct)")
    ap.add_argument("--high-pct", type=float, default=99.5, help="the model's window (its preprocess high_pct)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    pcfg = PreprocessConfig(low_pct=args.low_pct, high_pct=args.high_pct)
    raw = {p.name: p for d in args.raw for p in list_images(d)}
    done = 0
    for path in list_images(args.enhanced):
        src = raw.get(path.name)
        if src is None:
            raise SystemExit(f"{path}: no input DRR of that name in {', '.join(map(str, args.raw))}")
        drr = load_grayscale(src)
        lo, hi = percentile_window(drr, pcfg)
        out = anchored_output(load_grayscale(path), drr, lo, hi, args.sigma)
        write_png16(args.out / path.name, np.rint(out.astype(np.float64) * 65535.0).astype(np.uint16))
        done += 1
    print(f"wrote {done} anchored images (σ {args.sigma:g}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
