"""Sampler table of a DDPM-HQ model: 1000-step DDPM, 50, 20, 10, 4, 1 steps — PSNR, SSIM, UNet evaluations, s/image.

Usage:
    python benchmarks/restorer_samplers.py --pairs runs/restorer/pairs_ddpm_lq_heldout --out runs/bench/restorer_samplers

A whole 1024² image at 1000 steps costs ~1000 UNet passes (about 20 min on 2 cores), so quality is measured on a
few FIXED crops of held-out pairs (``--crops`` crops of ``--crop`` HQ px, one per held-out image, at fixed places in
the lung fields; the model is attention-free, so a crop is restored as it would be inside the whole image up to
border effects), and the seconds per whole 1024² image are computed from the measured cost of one UNet pass on a
whole 1024² image times the UNet passes each sampler makes, plus the measured per-image overhead (the table says so).
Samplers: ``scheduler:steps[:strength]`` with scheduler ddpm, ddim, dpmsolver++ or ``default`` (the model's own
scheduler and, without a strength, its default strength); ``default`` alone is the model's default sampler.
Target (issue 9): the default sampler (<= 4 UNet passes) within 0.3 dB PSNR of the best 50-step result.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from restorer_bench import (
    NIH_DIR,
    Restorer,
    add_common_args,
    bicubic_pairs,
    load_pairs,
    load_restorer,
    md_table,
    packaged_model,
    progress_bar,
    record_line,
    run_record,
    setup,
    write_report,
)

DEFAULT_SAMPLERS = "ddpm:1000:1,default:50,default:20,default:10,default:4,default:1,default"
# crop centres (row, column) as fractions of the image: both lung fields, upper and lower
CROP_CENTRES = ((0.40, 0.30), (0.40, 0.70), (0.60, 0.30), (0.60, 0.70))


@dataclass(frozen=True)
class Sampler:
    """One sampler setting; None fields take the model's default."""

    scheduler: str | None
    steps: int | None
    strength: float | None

    @classmethod
    def parse(cls, text: str) -> Sampler:
        """``scheduler:steps[:strength]`` or ``default`` (see the module docstring)."""
        parts = text.strip().split(":")
        if parts == ["default"]:
            return cls(None, None, None)
        if len(parts) not in (2, 3):
            raise SystemExit(f"--samplers: {text!r} is not scheduler:steps[:strength] or default")
        name = None if parts[0] == "default" else parts[0].lower()
        if name is not None and name not in ("ddpm", "ddim", "dpmsolver++"):
            raise SystemExit(f"--samplers: unknown scheduler {parts[0]!r}: expected ddpm, ddim, dpmsolver++ or default")
        try:
            steps = int(parts[1])
            strength = float(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise SystemExit(f"--samplers: {text!r}: steps must be an integer and strength a number") from None
        if steps < 1 or (strength is not None and not 0.0 < strength <= 1.0):
            raise SystemExit(f"--samplers: {text!r}: steps must be >= 1 and strength in (0, 1]")
        return cls(name, steps, strength)

    def resolve(self, model: Restorer) -> tuple[str, int, float]:
        """(scheduler, steps, strength) with the model's defaults filled in."""
        return (
            self.scheduler or model.scheduler_name,
            model.default_steps if self.steps is None else self.steps,
            model.default_strength if self.strength is None else self.strength,
        )


def crop_pairs(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], n: int, crop: int, scale: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """``n`` fixed crops (one per pair, centres cycling through CROP_CENTRES): LQ (n,1,c/s,c/s), HQ (n,1,c,c)."""
    if crop % (2 * scale):
        raise SystemExit(f"--crop must be a multiple of {2 * scale}, got {crop}")
    lqs, hqs, where = [], [], []
    for k, (name, lq, hq) in enumerate(pairs[:n]):
        h, w = hq.shape[-2:]
        if crop > min(h, w):
            raise SystemExit(f"--crop {crop} is larger than the {h}x{w} HQ image {name}")
        fy, fx = CROP_CENTRES[k % len(CROP_CENTRES)]
        # origin on the LQ grid so the LQ crop is exactly the HQ crop's source
        y = int(np.clip(round(fy * h - crop / 2), 0, h - crop)) // scale
        x = int(np.clip(round(fx * w - crop / 2), 0, w - crop)) // scale
        c = crop // scale
        lqs.append(lq[..., y : y + c, x : x + c])
        hqs.append(hq[..., y * scale : y * scale + crop, x * scale : x * scale + crop])
        where.append({"name": name, "hq_top": y * scale, "hq_left": x * scale})
    return torch.cat(lqs), torch.cat(hqs), where


def whole_image_cost(model: Restorer, lq_side: int, repeats: int, seed: int) -> dict[str, float]:
    """Median seconds of one UNet pass on a whole lq_side² -> (scale*lq_side)² image, and the per-image overhead."""
    lq = torch.zeros(1, 1, lq_side, lq_side)
    model.restore(lq, 1, 1.0, seed=seed)  # warm-up: first-call allocations must not count
    fwd, over = [], []
    for _ in range(repeats):
        model.clock.reset()
        t0 = time.perf_counter()
        model.restore(lq, 1, 1.0, seed=seed)
        total = time.perf_counter() - t0
        fwd.append(model.clock.seconds / max(1, model.clock.calls))
        over.append(total - model.clock.seconds)
    return {"unet_pass_s": statistics.median(fwd), "overhead_s": statistics.median(over), "repeats": repeats}


def run(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Restore the fixed crops with every sampler; time whole-image UNet passes; the JSON-ready result."""
    from restoration.ddpm_hq import upsample_condition
    from restoration.evaluate import psnr_ssim

    path = args.model or packaged_model()
    if path is None:
        raise SystemExit("--model: no packaged model in this checkout; pass --model MODEL_DIR")
    model = load_restorer(path, device)
    samplers = [Sampler.parse(t) for t in args.samplers.split(",") if t.strip()]
    if args.pairs is not None:
        pairs = load_pairs(args.pairs, args.crops, model.scale)
    else:
        pairs = bicubic_pairs(args.nih, args.crops, model.lq_size * model.scale, model.scale, model.preprocess)
    lq, hq, where = crop_pairs(pairs, args.crops, args.crop, model.scale)
    refs = [((hq[i, 0].double().numpy() + 1) / 2).clip(0, 1) for i in range(len(hq))]

    def scores(out: torch.Tensor) -> tuple[float, float]:
        vals = [psnr_ssim(((out[i, 0].double().numpy() + 1) / 2).clip(0, 1), refs[i]) for i in range(len(refs))]
        return float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals]))

    base = scores(upsample_condition(lq, model.scale))
    cost = whole_image_cost(model, model.lq_size, args.timing_repeats, args.seed)
    rows, seen = [], set()
    for s in progress_bar(samplers, "samplers", args.progress):
        sched, steps, strength = s.resolve(model)
        if (sched, steps, strength) in seen:
            continue
        seen.add((sched, steps, strength))
        model.clock.reset()
        t0 = time.perf_counter()
        out = model.restore(lq, steps, strength, seed=args.seed, scheduler=sched)
        crop_s = time.perf_counter() - t0
        psnr, ssim = scores(out)
        passes = model.clock.calls  # one pass per step for the whole crop batch
        rows.append({
            "sampler": f"{sched}:{steps}:{strength:g}", "scheduler": sched, "steps": steps, "strength": strength,
            "is_default": s.resolve(model) == Sampler(None, None, None).resolve(model),
            "unet_passes": passes, "psnr": psnr, "ssim": ssim, "crops_seconds": crop_s,
            "s_per_1024_image_est": passes * cost["unet_pass_s"] + cost["overhead_s"],
        })  # fmt: skip
    return {"model": str(path), "crops": where, "crop_px": args.crop, "input": {"psnr": base[0], "ssim": base[1]},
            "whole_image": {"lq_side": model.lq_size, "hq_side": model.lq_size * model.scale, **cost},
            "rows": rows, "target": target(rows, args.target_db)}  # fmt: skip


def target(rows: list[dict[str, Any]], margin_db: float) -> dict[str, Any] | None:
    """The default sampler vs the best 50-step row: met when within ``margin_db`` and at most 4 UNet passes."""
    default = next((r for r in rows if r["is_default"]), None)
    fifty = [r for r in rows if r["steps"] == 50]
    if default is None or not fifty:
        return None
    best = max(fifty, key=lambda r: r["psnr"])
    gap = best["psnr"] - default["psnr"]
    return {"default": default["sampler"], "best_50": best["sampler"], "gap_db": gap, "unet_passes": default["unet_passes"],
            "met": gap <= margin_db and default["unet_passes"] <= 4}  # fmt: skip


def markdown(result: dict[str, Any], record: dict[str, Any], args: argparse.Namespace) -> str:
    """The sampler table and its target line."""
    wi = result["whole_image"]
    rows = [["bicubic upsampling of the input", "–", f"{result['input']['psnr']:.2f}", f"{result['input']['ssim']:.3f}", "–"]]
    for r in result["rows"]:
        name = r["sampler"] + (" (model default)" if r["is_default"] else "")
        rows.append([name, r["unet_passes"], f"{r['psnr']:.2f}", f"{r['ssim']:.3f}", f"{r['s_per_1024_image_est']:.1f}"])
    header = ["sampler (scheduler:steps:strength)", "UNet passes", "PSNR dB", "SSIM", f"s / {wi['hq_side']}² image (est.)"]
    lines = [
        f"Model `{result['model']}`; {len(result['crops'])} fixed {result['crop_px']}² crops of held-out pairs "
        f"({args.pairs or 'bicubic pairs made from the held-out NIH CXRs'}), seed {args.seed}.",
        f"PSNR/SSIM are crop means. Seconds per whole {wi['hq_side']}² image are NOT timed per sampler: UNet passes × "
        f"{wi['unet_pass_s']:.3f} s (median of {wi['repeats']} timed passes on a whole {wi['lq_side']}² -> "
        f"{wi['hq_side']}² image) + {wi['overhead_s']:.3f} s measured per-image overhead.",
        "",
        md_table(header, rows),
        "",
    ]
    t = result["target"]
    if t is not None:
        lines.append(
            f"- target: default sampler ({t['default']}, {t['unet_passes']} UNet passes) within {args.target_db:g} dB "
            f"of the best 50-step result ({t['best_50']}): gap **{t['gap_db']:+.2f} dB**, {'met' if t['met'] else 'NOT met'}"
        )
    lines += ["", record_line(record)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the sampler sweep, write JSON + Markdown, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="DDPM-HQ folder (default: the packaged one)")
    ap.add_argument("--pairs", type=Path, default=None, help="held-out pairs folder (default: bicubic pairs made here)")
    ap.add_argument("--nih", type=Path, default=NIH_DIR, help="real NIH CXRs (held-out split) for bicubic pairs")
    ap.add_argument("--samplers", default=DEFAULT_SAMPLERS, help=f"comma list (default {DEFAULT_SAMPLERS})")
    ap.add_argument("--crops", type=int, default=4, help="fixed crops, one per held-out image")
    ap.add_argument("--crop", type=int, default=128, help="crop side in HQ px")
    ap.add_argument("--timing-repeats", type=int, default=2, help="timed whole-image UNet passes (median)")
    ap.add_argument("--target-db", type=float, default=0.3, help="allowed PSNR gap of the default to the best 50-step")
    add_common_args(ap, "restorer_samplers")
    args = ap.parse_args(argv)
    device = setup(args)
    if args.crops < 1 or args.crop < 1 or args.timing_repeats < 1:
        raise SystemExit("--crops, --crop and --timing-repeats must be >= 1")
    record = run_record(device)
    result = run(args, device)
    write_report(args.out, "restorer_samplers", {**result, "run": record}, markdown(result, record, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
