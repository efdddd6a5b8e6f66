"""Experiment: a pairs folder whose LQ keeps the degrader's fine structure but the HQ's coarse intensities.

Usage:
    python benchmarks/anchor_pairs.py runs/restorer/pairs_munit runs/restorer/pairs_munit_a8 --sigma 8

LQ' = LQ − G(LQ) + G(HQ↓2), G a Gaussian of σ ``--sigma`` LQ pixels, HQ↓2 the 2x area-downsampled HQ: the pair is
then aligned in tone (MUNIT-LQ's held-out pairs: 12.3 → 29.9 dB between LQ and HQ↓2 on one image) and differs
only in structure finer than ~σ. HQ files are copied; ``pairs.json`` is the source's plus ``anchor_sigma`` and
``anchored_from``. Used for the "anchored" rows of BENCHMARKS.md ("Stage 2"); not part of ``make-pairs``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    """Write the anchored pairs folder."""
    import torch
    from PIL import Image

    from data.images import write_png16
    from restoration.degrade import blur, gaussian_kernel
    from restoration.pairs import PAIRS_INFO_NAME, downsample2x, to_uint16

    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path, help="a pairs folder (make-pairs)")
    ap.add_argument("dst", type=Path, help="the anchored pairs folder to write")
    ap.add_argument("--sigma", type=float, default=8.0, help="Gaussian σ in LQ pixels")
    args = ap.parse_args()
    if not (args.src / PAIRS_INFO_NAME).is_file():
        raise SystemExit(f"{args.src}: not a pairs folder (no {PAIRS_INFO_NAME})")
    kernel = gaussian_kernel(int(6 * args.sigma) | 1, args.sigma)

    def load(p: Path) -> torch.Tensor:
        return torch.from_numpy(np.asarray(Image.open(p)).astype(np.float32) / 65535.0 * 2 - 1)[None, None]

    (args.dst / "lq").mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.src / "hq", args.dst / "hq", dirs_exist_ok=True)
    for p in sorted((args.src / "lq").glob("*.png")):
        lq, ref = load(p), downsample2x(load(args.src / "hq" / p.name))
        write_png16(args.dst / "lq" / p.name, to_uint16((lq - blur(lq, kernel) + blur(ref, kernel))[0, 0]))
    info = json.loads((args.src / PAIRS_INFO_NAME).read_text(encoding="utf-8"))
    info |= {"anchor_sigma": args.sigma, "anchored_from": str(args.src)}
    (args.dst / PAIRS_INFO_NAME).write_text(json.dumps(info, indent=2), encoding="utf-8")
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()
