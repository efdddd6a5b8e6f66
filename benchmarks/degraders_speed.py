"""Seconds per training step (random crops) and per whole 512 px LQ image for MUNIT-LQ and DDPM-LQ on this CPU.

Usage: OMP_NUM_THREADS=1 python benchmarks/degraders_speed.py [--crop 128] [--batch 4] [--repeats 3]
    [--munit-dim 16 --munit-dim 12 ...]

Synthetic tensors (the cost does not depend on pixel values); every configuration is timed in interleaved rounds
and the median is reported, as wall-clock seconds and as this process's CPU seconds (with one thread, the CPU
seconds are what a dedicated core would take; on a machine shared with other work the wall clock is longer). One training step is what
the trainers do per iteration: MUNIT one discriminator and one generator update of both domains; DDPM-LQ one
noise-prediction update. Inference: MUNIT HQ -> LQ of one 512 x 512 image; DDPM-LQ SDEdit at strength 0.3.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from restoration.ddpm_lq import DDPMLQConfig, build_scheduler, build_unet, denoiser_output, sdedit
from restoration.munit import MUNIT, MUNITConfig


def munit_case(cfg: MUNITConfig, crop: int, batch: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one training step, one 512 px translation) closures."""
    m = MUNIT(cfg)
    og = torch.optim.Adam(m.generator_parameters(), 1e-4, betas=(0.5, 0.999))
    od = torch.optim.Adam(m.discriminator_parameters(), 1e-4, betas=(0.5, 0.999))
    xa, xb = torch.rand(batch, 1, crop, crop) * 2 - 1, torch.rand(batch, 1, crop, crop) * 2 - 1
    x512 = torch.rand(1, 1, 512, 512) * 2 - 1

    def step() -> None:
        m.train()
        od.zero_grad()
        m(xa, xb, mode="dis")["total"].backward()
        od.step()
        og.zero_grad()
        m(xa, xb, mode="gen")["total"].backward()
        og.step()

    def infer() -> None:
        m.eval()
        with torch.no_grad():
            m.translate_hq_to_lq(x512, generator=torch.Generator().manual_seed(0))

    return step, infer


def ddpm_lq_case(cfg: DDPMLQConfig, crop: int, batch: int, steps: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one training step, one 512 px SDEdit at strength 0.3 with ``steps`` steps) closures."""
    unet, sched = build_unet(cfg), build_scheduler(cfg)
    opt = torch.optim.AdamW(unet.parameters(), 1e-4)
    x = torch.rand(batch, 1, crop, crop) * 2 - 1
    x512 = torch.rand(1, 1, 512, 512) * 2 - 1

    def step() -> None:
        unet.train()
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        noise = torch.randn_like(x)
        loss = F.mse_loss(denoiser_output(unet, sched.add_noise(x, noise, t), None, t, cfg.space_to_depth), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer() -> None:
        unet.eval()
        sdedit(unet, sched, x512, 0.3, steps, generator=torch.Generator().manual_seed(0))

    return step, infer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sdedit-steps", type=int, default=10)
    ap.add_argument("--munit-dim", type=int, action="append", help="MUNIT widths to compare (default: the default)")
    args = ap.parse_args()
    torch.manual_seed(0)
    cases: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {}
    for dim in args.munit_dim or [MUNITConfig().dim]:
        cases[f"MUNIT-LQ dim {dim}"] = munit_case(MUNITConfig(dim=dim), args.crop, args.batch)
    cases["DDPM-LQ default"] = ddpm_lq_case(DDPMLQConfig(image_size=args.crop), args.crop, args.batch, args.sdedit_steps)
    times: dict[str, tuple[list[float], list[float], list[float], list[float]]] = {k: ([], [], [], []) for k in cases}
    for name, (step, infer) in cases.items():  # warm-up
        step()
        infer()
    for _ in range(args.repeats):
        for name, (step, infer) in cases.items():
            for fn, out, cpu in ((step, times[name][0], times[name][2]), (infer, times[name][1], times[name][3])):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                out.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    print(f"threads={torch.get_num_threads()} crop={args.crop} batch={args.batch} repeats={args.repeats}")
    print(f"{'model':<20} {'s/train step':>12} {'s/512 image':>12} {'CPU s/step':>11} {'CPU s/image':>11}")
    for name, (st, inf, cst, cinf) in times.items():
        row = (statistics.median(v) for v in (st, inf, cst, cinf))
        print(f"{name:<20} " + " ".join(f"{v:>{w}.2f}" for v, w in zip(row, (12, 12, 11, 11), strict=True)))


if __name__ == "__main__":
    main()
