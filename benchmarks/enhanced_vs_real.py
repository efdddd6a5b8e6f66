"""README figure: raw DRR | enhanced (DDPM-HQ) | a real held-out chest radiograph, nodule boxes drawn, and zooms.

Usage:
    python benchmarks/enhanced_vs_real.py --out docs/images/enhanced_vs_real.png
    python benchmarks/enhanced_vs_real.py --dataset out/demo --image 2 --out docs/images/enhanced_vs_real.png

Without ``--dataset`` the enhanced dataset is the one ``restorer_nodules.py``/``restorer_realism.py`` make with the
same options (generate resumes). The raw DRR is drawn with its own boxes (``drr_bbox_xywh``), the enhanced image
with the dataset's boxes; faint nodules (COCO ignore) dashed. The real image is a held-out NIH ChestX-ray14 CXR
(NIH Clinical Center; Wang et al., CVPR 2017; attribution required), PA view, the first held-out one by name unless
``--real`` names another; NIH gives it no nodule boxes. Each panel is shown as stored (16-bit files over their full
range, 8-bit as is); nothing is tuned per panel. The second row zooms into the same region of each (the first
non-faint nodule, else the right mid-lung; the real image at the same relative place), drawn pixel for pixel
(nearest neighbour), so what the 2x super-resolution adds is visible.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from look_vs_real import gray
from restorer_bench import NIH_DIR, add_dataset_args, enhanced_records, ensure_datasets, held_out_real


ZOOM = 0.16  # zoom crops: this share of the image side


def first_held_out_pa(nih: Path) -> Path:
    """The first held-out NIH image by name whose view is PA (any held-out one if the table has no views)."""
    held = held_out_real(nih)
    table = nih / "images.csv" if (nih / "images.csv").is_file() else nih.parent / "images.csv"
    if table.is_file():
        with open(table, newline="", encoding="utf-8") as fh:
            pa = {r["image"] for r in csv.DictReader(fh) if r.get("view", "").upper() == "PA"}
        for p in held:
            if p.name in pa:
                return p
    return held[0]


def draw(dataset: Path, index: int, real: Path, out: Path) -> Path:
    """Write the three-panel PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from data.atomic import atomic_write_bytes

    recs = enhanced_records(dataset)
    if not 0 <= index < len(recs):
        raise SystemExit(f"--image {index}: the dataset has images 0..{len(recs) - 1}")
    rec = recs[index]
    raw, enh, ref = gray(dataset / rec.attributes["drr_file"]), gray(dataset / rec.file_name), gray(real)
    fx = enh.shape[1] / raw.shape[1]
    raw_boxes = [n.attributes.get("drr_bbox_xywh") or [v / fx for v in n.bbox_xywh] for n in rec.nodules]
    faint = [bool(n.attributes.get("faint")) for n in rec.nodules]
    model = (rec.attributes.get("enhanced") or {}).get("model_dir", "?")
    panels = [
        (raw, raw_boxes, f"raw DRR ({raw.shape[1]}²)"),
        (enh, [n.bbox_xywh for n in rec.nodules], f"enhanced, DDPM-HQ ({enh.shape[1]}²)"),
        (ref, [], f"real CXR, held-out NIH ({ref.shape[1]}²)"),
    ]
    fig, grid = plt.subplots(2, 3, figsize=(12, 8.6), gridspec_kw={"height_ratios": [1.0, 0.9]})
    axes = grid[0]
    # zoom: ZOOM of the image side around the first non-faint nodule (else the right mid-lung), same place in each
    target = next((n.bbox_xywh for n, f in zip(rec.nodules, faint) if not f), None)
    cx, cy = (0.3, 0.45) if target is None else (
        (target[0] + target[2] / 2) / enh.shape[1], (target[1] + target[3] / 2) / enh.shape[0])
    for ax, (img, _, title) in zip(grid[1], panels):
        h, w = img.shape
        side = max(8, int(round(ZOOM * w)))
        x0 = int(np.clip(round(cx * w - side / 2), 0, w - side))
        y0 = int(np.clip(round(cy * h - side / 2), 0, h - side))
        ax.imshow(img[y0 : y0 + side, x0 : x0 + side], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"zoom: {side}x{side} px of the {title.split(' (')[0]}", fontsize=9)
        ax.axis("off")
    for ax, (img, boxes, title) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="lanczos")
        for (x, y, w, h), f in zip(boxes, faint):
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="#ffcc00" if f else "#ff3b30",
                                   lw=1.0, ls="--" if f else "-"))  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.text(0.5, 0.02, f"model {model}; boxes: nodules (dashed yellow: faint); real image: NIH ChestX-ray14 "
             "(NIH Clinical Center), no boxes", ha="center", fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(out, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    """Pick (or make) the dataset and the real image; write the figure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--image", type=int, default=0, help="which image of the (first) dataset")
    ap.add_argument("--real", type=Path, default=None, help="the real CXR (default: first held-out PA NIH image)")
    ap.add_argument("--nih", type=Path, default=NIH_DIR)
    ap.add_argument("--device", default="cpu", help="device for a dataset made here")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    ap.add_argument("--out", type=Path, default=Path("docs/images/enhanced_vs_real.png"))
    args = ap.parse_args(argv)
    dataset = ensure_datasets(args, args.device)[0]
    real = args.real or first_held_out_pa(args.nih)
    print(f"wrote {draw(dataset, args.image, real, args.out)} ({dataset} image {args.image} | {real.name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
