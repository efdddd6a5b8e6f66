"""README figure: the DRR look before issue 10 | today's default output (boxes drawn) | a real chest radiograph.

Usage:
    python benchmarks/unframed_drrs.py -n 1 --out out/look/old
    diffusionxray generate --out out/demo
    python benchmarks/look_vs_real.py --old out/look/old/<name>.png --dataset out/demo \
        --real ../shared/data/cxr/nih-chestxray14/images/<name>.png --out docs/images/look_vs_real.png

The real image is NIH ChestX-ray14 (NIH Clinical Center; Wang et al., CVPR 2017; attribution required). Each panel
is shown as stored (16-bit files scaled to their full range, 8-bit as is); nothing is tuned per panel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def gray(path: Path) -> np.ndarray:
    """A PNG as float in [0, 1] (16-bit over 65535, 8-bit over 255)."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(-1)
    return arr.astype(np.float64) / (65535.0 if arr.dtype == np.uint16 else 255.0)


def main() -> None:
    """Write the three-panel figure."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, required=True, help="a DRR as rendered before issue 10 (16-bit PNG)")
    parser.add_argument("--dataset", type=Path, required=True, help="a dataset made by today's generate")
    parser.add_argument("--real", type=Path, required=True, help="a real chest radiograph (PNG)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    old = gray(args.old)
    old = (old - old.min()) / max(float(np.ptp(old)), 1e-9)  # the old files used a small part of the 16-bit range
    coco = json.loads((args.dataset / "annotations" / "coco.json").read_text(encoding="utf-8"))
    first = coco["images"][0]
    new = gray(args.dataset / first["file_name"])
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == first["id"]]
    real = gray(args.real)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    panels = [
        (old, "before: line-integral DRR (CT box, no noise)"),
        (new, "now: default generate output (physics + clinical display)"),
        (real, "real PA radiograph (NIH ChestX-ray14)"),
    ]
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    for x, y, w, h in boxes:
        axes[1].add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="red", linewidth=1))
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
