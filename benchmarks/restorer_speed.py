"""CPU/GPU cost of the DDPM-HQ restorer at full size: seconds per UNet forward and per restored image, peak memory.

Random weights (cost does not depend on them). For each architecture: parameters, safetensors size (fp32/fp16),
seconds per forward pass on a whole ``--hq``² image, and seconds per image through ``DDPMHQPipeline`` with the
default sampler (``--steps`` x ``--strength`` UNet evaluations). Peak RSS is the process's, so run one
architecture per process when it matters.

    PYTHONPATH=$PWD python benchmarks/restorer_speed.py --threads 2 --arch 64,96,128,128x2 --arch 64,128,192,256x2
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def parse_arch(text: str) -> tuple[tuple[int, ...], int]:
    """``"64,96,128,128x2"`` -> ((64, 96, 128, 128), 2)."""
    widths, _, layers = text.partition("x")
    return tuple(int(c) for c in widths.split(",")), int(layers or 2)


def weights_mb(unet: torch.nn.Module, dtype: torch.dtype) -> float:
    """Size in MB (10^6 bytes) of the UNet saved as safetensors in ``dtype``."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        save_file({k: v.to(dtype).contiguous() for k, v in unet.state_dict().items()}, str(path))
        return path.stat().st_size / 1e6


def sync(device: str) -> None:
    """Wait for queued GPU work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    """Measure each ``--arch`` and print one JSON line per architecture."""
    from restoration.ddpm_hq import DDPMHQConfig, build_unet, unet_forward
    from restoration.pipeline_ddpm_hq import DDPMHQPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="widths x layers, e.g. 64,96,128,128x2 (default: DDPMHQConfig)")
    ap.add_argument("--space-to-depth", type=int, default=4)
    ap.add_argument("--hq", type=int, default=1024, help="HQ side of the test image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed forward passes (median reported)")
    ap.add_argument("--images", type=int, default=1, help="timed pipeline images (0: forward passes only)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the pipeline's)")
    ap.add_argument("--strength", type=float, default=None, help="sampler strength (default: the pipeline's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp16", action="store_true", help="run the UNet in float16 (GPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    archs = [parse_arch(a) for a in args.arch] if args.arch else [(DDPMHQConfig().block_out_channels, 2)]
    results = []
    for widths, layers in archs:
        cfg = DDPMHQConfig(
            lq_size=args.hq // 2, block_out_channels=widths, layers_per_block=layers,
            space_to_depth=args.space_to_depth, norm_num_groups=math.gcd(32, *widths),
        )  # fmt: skip
        torch.manual_seed(0)
        dtype = torch.float16 if args.fp16 else torch.float32
        unet = build_unet(cfg).eval().to(args.device)
        unet = unet.half() if args.fp16 else unet
        row: dict = {
            "arch": f"{','.join(map(str, widths))}x{layers}", "space_to_depth": cfg.space_to_depth, "hq": args.hq,
            "threads": args.threads, "device": args.device, "dtype": str(dtype).removeprefix("torch."),
            "params_M": sum(p.numel() for p in unet.parameters()) / 1e6,
            "safetensors_MB": {"fp32": weights_mb(unet, torch.float32), "fp16": weights_mb(unet, torch.float16)},
        }  # fmt: skip
        x = torch.zeros(1, 1, args.hq, args.hq, device=args.device)
        t = torch.tensor([500], device=args.device)
        times, cpu = [], []
        with torch.no_grad():
            for i in range(args.repeats + 1):  # the first pass (allocations) is not timed
                sync(args.device)
                t0, c0 = time.perf_counter(), time.process_time()
                unet_forward(unet, x, x, t)
                sync(args.device)
                if i:
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
        # on a shared machine wall time includes waiting for cores: CPU seconds / threads is the uncontended estimate
        row["s_per_forward"] = statistics.median(times)
        row["cpu_s_per_forward"] = statistics.median(cpu)
        if args.images == 0:
            print(json.dumps(row), flush=True)
            results.append(row)
            continue
        pipe = DDPMHQPipeline.from_model(unet, cfg)
        steps = args.steps or pipe.config.num_inference_steps
        strength = args.strength or pipe.config.strength
        img = np.random.default_rng(0).random((args.hq // 2, args.hq // 2)).astype(np.float32)
        per_image, cpu_image = [], []
        for i in range(args.images):
            sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            out = pipe(img, num_inference_steps=steps, strength=strength, generator=torch.Generator().manual_seed(i))
            sync(args.device)
            per_image.append(time.perf_counter() - t0)
            cpu_image.append(time.process_time() - c0)
        assert out.images[0].shape == (args.hq, args.hq)
        row |= {
            "steps": steps, "strength": strength, "unet_evals": max(1, round(steps * strength)),
            "s_per_image": statistics.median(per_image), "cpu_s_per_image": statistics.median(cpu_image),
            "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }  # fmt: skip
        if args.device.startswith("cuda"):
            row["peak_cuda_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        print(json.dumps(row), flush=True)
        results.append(row)
    return {"results": results}


if __name__ == "__main__":
    main(sys.argv[1:])
