"""Picture of the LQ domains: real CXR (HQ) | bicubic | classical | MUNIT-LQ | DDPM-LQ | one of our DRRs.

Usage (after ``benchmarks/restoration_chain.sh RUN``):
    python benchmarks/degradation_sheet.py RUN --out docs/images/degradations.png

Rows are held-out CXRs; each LQ image is shown at its own (LQ) resolution, upsampled with nearest neighbours so
the pixels stay visible. The last column is a DRR from the run's LQ training set, for comparison with the target
domain the degraders learned.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("docs/images/degradations.png"))
    args = parser.parse_args()

    from PIL import Image, ImageDraw

    from restoration.degrade import ClassicalDegradationConfig, bicubic_degrade, classical_degrade
    from restoration.preprocess import PreprocessConfig, list_images, load_grayscale, preprocess_image

    run = args.run
    munit, ddpm = run / "pairs_munit_val", run / "pairs_ddpm_lq_val"
    names = sorted(p.name for p in (munit / "hq").glob("*.png"))[: args.rows]
    drrs = list_images(run / "drr" / "images")[: args.rows]
    pcfg = PreprocessConfig(size=64)
    gen = torch.Generator().manual_seed(0)
    cols = ["real CXR (HQ)", "bicubic", "classical", "MUNIT-LQ", "DDPM-LQ", "our DRR"]
    t, pad, head = args.tile, 4, 14
    sheet = Image.new("L", (len(cols) * (t + pad), head + len(names) * (t + pad)), 0)
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(cols):
        draw.text((c * (t + pad) + 2, 1), title, fill=255)

    def paste(img01: np.ndarray, r: int, c: int) -> None:
        im = Image.fromarray(np.rint(np.clip(img01, 0, 1) * 255).astype(np.uint8)).resize((t, t), Image.NEAREST)
        sheet.paste(im, (c * (t + pad), head + r * (t + pad)))

    for r, name in enumerate(names):
        hq01 = load_grayscale(munit / "hq" / name)
        hq = torch.from_numpy(hq01 * 2 - 1)[None, None].float()
        row = [
            hq01,
            (bicubic_degrade(hq, 2)[0, 0].numpy() + 1) / 2,
            (classical_degrade(hq, gen, ClassicalDegradationConfig())[0][0, 0].numpy() + 1) / 2,
            load_grayscale(munit / "lq" / name),
            load_grayscale(ddpm / "lq" / name),
            (preprocess_image(load_grayscale(drrs[r % len(drrs)]), pcfg) + 1) / 2,
        ]
        for c, img in enumerate(row):
            paste(np.asarray(img, dtype=np.float64), r, c)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
