"""Benchmark: thick-slice CTs before/after PCHIP slice interpolation (terraces and spherical-nodule box shapes).

Usage:
    python benchmarks/thick_slices.py [--images 3] [--size 512] [--figure docs/images/thick_slices.png]

For the shared Lung-PET-CT-Dx 5 mm and 8 mm series (../shared/data/ct/lung-pet-ct-dx, CC BY 4.0), renders the
same seeded samples (spherical solid nodules, 10–25 mm) from the CT as acquired and from the CT interpolated by
``ct_projection.slices.refine_thick_slices``, and prints the boxes' height/width ratios (a sphere's box is
square); writes a figure with the nodule-free PA DRR of each (a zoom on the lung bases, where terraces show) and
a vertical profile through the right lung.
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data" / "ct" / "lung-pet-ct-dx"
SERIES = {
    "5 mm (Philips, 64 slices)": SHARED / "Lung_Dx-A0001",
    "8 mm (Siemens, 30 slices)": SHARED / "Lung_Dx-A0002",
}


def box_ratios(vol, images: int, size: int) -> list[tuple[float, float]]:
    """(box h/w, box h/w over that of the nodule's analytic surface projection) of every nodule of seeded samples.

    "sphere" nodules are mildly ellipsoidal and rotated, so the second number is the shape error of the label.
    """
    from ct_projection.geometry import ProjectionGeometry
    from ct_projection.nodules import NoduleConfig
    from pipeline.config import GenerateConfig
    from pipeline.sample import SampleContext, make_sample

    config = GenerateConfig(
        images_per_ct=images,
        seed=0,
        geometry=ProjectionGeometry(size_px=size),
        nodules=NoduleConfig.from_dict(
            {"count_range": [3, 3], "diameter_range_mm": [10.0, 25.0], "type_probs": {"solid": 1.0},
             "shape_probs": {"sphere": 1.0}}
        ),
        write_nodule_free=False,
    )  # fmt: skip
    context = SampleContext.build(vol, config, "bench", device="cpu")
    out = []
    for index in range(images):
        for n in make_sample(context, index).labels:
            pw, ph = n.attributes["projected_box_xywh"][2:]
            out.append((n.bbox_xywh[3] / n.bbox_xywh[2], (n.bbox_xywh[3] / n.bbox_xywh[2]) / (ph / pw)))
    return out


def nodule_free(vol, size: int) -> np.ndarray:
    """The monoenergetic PA line-integral image of ``vol`` at the base pose, framed on the lungs."""
    from ct_projection.framing import framed_isocentre
    from ct_projection.geometry import ProjectionGeometry, base_pose
    from ct_projection.lungs import lung_mask
    from ct_projection.render import DRRRenderer

    geometry = ProjectionGeometry(size_px=size)
    renderer = DRRRenderer(vol, geometry, isocentre_world=framed_isocentre(vol, lung_mask(vol), geometry), device="cpu")
    return renderer.render(base_pose(geometry))


def main() -> None:
    """Measure both series and write the figure."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "images" / "thick_slices.png")
    args = parser.parse_args()
    from ct_projection.ingest import load_ct
    from ct_projection.slices import refine_thick_slices

    print(f"{date.today()} · {platform.processor() or platform.machine()} · size {args.size} px, "
          f"{args.images} images x 3 spherical nodules (10–25 mm) per CT and condition\n", flush=True)  # fmt: skip
    print("| CT | slices | nodules | median h/w | max h/w | median h/w ÷ true shape | max | within ±15% |", flush=True)
    print("|---|---|---|---|---|---|---|---|", flush=True)
    panels = []
    for name, folder in SERIES.items():
        if not folder.is_dir():
            sys.exit(f"{folder}: shared Lung-PET-CT-Dx data not present")
        coarse = load_ct(folder)
        fine, note = refine_thick_slices(coarse)
        print(f"{name}: {note}", file=sys.stderr, flush=True)
        for label, vol in (("as acquired", coarse), ("PCHIP-interpolated", fine)):
            r = np.array(box_ratios(vol, args.images, args.size))
            rel = r[:, 1]
            print(f"| {name} | {label} | {len(r)} | {np.median(r[:, 0]):.2f} | {r[:, 0].max():.2f} | "
                  f"{np.median(rel):.2f} | {rel.max():.2f} | {100 * np.mean(np.abs(rel - 1) <= 0.15):.0f}% |",
                  flush=True)  # fmt: skip
        panels.append((name, nodule_free(coarse, args.size), nodule_free(fine, args.size)))
    write_figure(args.figure, panels)
    print(f"\nfigure: {args.figure.relative_to(ROOT) if args.figure.is_relative_to(ROOT) else args.figure}")


def write_figure(path: Path, panels: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """Per CT: zoom on the lung bases as acquired | interpolated, and a vertical profile through the right lung."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from data.atomic import atomic_write_bytes

    fig, axes = plt.subplots(len(panels), 3, figsize=(13, 4.4 * len(panels)), dpi=100)
    for row, (name, coarse, fine) in zip(np.atleast_2d(axes), panels):
        h, w = coarse.shape
        lo, hi = np.percentile(fine, [1, 99.5])
        r0, r1, c0, c1 = int(0.45 * h), int(0.85 * h), int(0.15 * w), int(0.55 * w)
        for ax, img, label in ((row[0], coarse, "as acquired"), (row[1], fine, "PCHIP-interpolated")):
            ax.imshow(img[r0:r1, c0:c1], cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.axis("off")
        col = int(0.33 * w)  # through the image-left (patient's right) lung
        rows_ = np.arange(r0, r1)
        row[2].plot(rows_, coarse[r0:r1, col], label="as acquired", color="tab:red", lw=1)
        row[2].plot(rows_, fine[r0:r1, col], label="interpolated", color="black", lw=1)
        row[2].set_title(f"column {col}: line integral down the lung base", fontsize=9)
        row[2].set_xlabel("detector row")
        row[2].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


if __name__ == "__main__":
    main()
