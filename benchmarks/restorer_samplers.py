"""Sampler table of a DDPM-HQ model: 1000-step DDPM, 50, 20, 10, 4, 1 steps — PSNR, SSIM, UNet passes, s/image.

Usage:
    python benchmarks/restorer_samplers.py --pairs runs/restorer/pairs_ddpm_lq_heldout --out runs/bench/restorer_samplers

A whole 1024² image at 1000 steps costs ~1000 UNet passes (tens of minutes on 2 cores), so quality is measured on
one fixed crop (``--crop`` HQ px, at a seeded position) of each of ``--images`` held-out pairs; the model is
attention-free, so a crop is restored as inside the whole image up to border effects. Seconds per whole 1024² image
are timed on a whole image for samplers of at most ``--max-timed`` UNet passes, and computed for the others as
passes x the measured seconds of one whole-image pass (the table says which). The work is
``restoration.evaluate.evaluate_samplers`` (``crop``, ``whole_image_timing``); this script picks held-out data,
records the run and writes the table. Samplers: ``scheduler:steps[:strength]`` (strength 1 = from pure noise) or
``default`` (the model folder's own sampler). Target (issue 9): the default sampler (<= 4 UNet passes) within
0.3 dB PSNR of the best 50-step result.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from restorer_bench import (
    NIH_DIR,
    add_common_args,
    held_out_real,
    md_table,
    packaged_model,
    pairs_of,
    record_line,
    run_record,
    setup,
    write_report,
)


def held_out_paths(args: argparse.Namespace) -> tuple[list[Path], list[Path] | None, str]:
    """(HQ paths, LQ paths or None for bicubic, description) of the first ``--images`` held-out pairs."""
    if args.pairs is None:
        return held_out_real(args.nih)[: args.images], None, "bicubic pairs made from the held-out NIH CXRs"
    return *pairs_of(args.pairs, args.images), f"held-out pairs `{args.pairs}`"


def target(rows: list[dict[str, Any]], margin_db: float) -> dict[str, Any] | None:
    """The default sampler vs the best 50-step row: met when within ``margin_db`` and at most 4 UNet passes."""
    default = next((r for r in rows if r["is_default"]), None)
    fifty = [r for r in rows if r["steps"] == 50]
    if default is None or not fifty:
        return None
    best = max(fifty, key=lambda r: r["psnr"])
    gap = best["psnr"] - default["psnr"]
    return {"default": default["sampler"], "best_50": best["sampler"], "gap_db": gap,
            "unet_passes": default["unet_passes"], "met": gap <= margin_db and default["unet_passes"] <= 4}  # fmt: skip


def run(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Evaluate every sampler on the fixed crops and time whole images; the JSON-ready result."""
    from restoration.ddpm_hq import ModelFolderError, ModelNotFoundError
    from restoration.evaluate import SAMPLER_TABLE, SamplerSpec, evaluate_samplers
    from restoration.pipeline_ddpm_hq import load_pipeline

    path = args.model or packaged_model()
    if path is None:
        raise SystemExit("--model: no packaged model in this checkout; pass --model MODEL_DIR")
    texts = [t for t in args.samplers.split(",") if t.strip()] if args.samplers else list(SAMPLER_TABLE)
    try:
        specs = [SamplerSpec.parse(t) for t in texts]
        pipe = load_pipeline(path)
        default = (pipe.sampler_name, int(pipe.config.num_inference_steps), float(pipe.config.strength))
        hq, lq, what = held_out_paths(args)
        res = evaluate_samplers(path, hq, specs, lq, seed=args.seed, device=device, batch_size=args.images,
                                crop=args.crop, whole_image_timing=True, max_timed_evals=args.max_timed)  # fmt: skip
    except (ModelNotFoundError, ModelFolderError, ValueError) as err:
        raise SystemExit(" ".join(str(err).split())) from None
    rows = []
    for r in res["runs"]:
        wi = r["whole_image"]
        rows.append({
            "sampler": r["sampler"], "scheduler": r["scheduler"], "steps": r["steps"], "strength": r["strength"],
            "is_default": (r["scheduler"], r["steps"], r["strength"]) == default, "unet_passes": r["steps_run"],
            "psnr": r["model"]["psnr"], "ssim": r["model"]["ssim"], "crop_seconds": r["seconds"]["per_image"],
            "s_per_image": wi["seconds"], "timed": wi["measured"], "image_px": wi["size"],
            "s_per_forward": wi["seconds_per_forward"],
        })  # fmt: skip
    return {"model": str(path), "data": what, "n": res["n"], "crop_px": res["crop"], "input": res["bicubic"],
            "default_sampler": list(default), "rows": rows, "target": target(rows, args.target_db)}  # fmt: skip


def markdown(result: dict[str, Any], record: dict[str, Any], args: argparse.Namespace) -> str:
    """The sampler table and its target line."""
    rows_ = result["rows"]
    h, w = rows_[0]["image_px"]
    table = [["bicubic upsampling of the input", "–", f"{result['input']['psnr']:.2f}", f"{result['input']['ssim']:.3f}", "–"]]
    for r in rows_:
        name = f"{r['scheduler']}, {r['steps']} steps, strength {r['strength']:g}" + (" (model default)" if r["is_default"] else "")
        secs = f"{r['s_per_image']:.1f}" + ("" if r["timed"] else " (est.)")
        table.append([name, r["unet_passes"], f"{r['psnr']:.2f}", f"{r['ssim']:.3f}", secs])
    lines = [
        f"Model `{result['model']}`; one fixed {result['crop_px']}² crop of each of {result['n']} {result['data']}; "
        f"seed {args.seed}. PSNR/SSIM are crop means. Seconds per whole {h}x{w} image: timed on a whole image for "
        f"samplers of <= {args.max_timed} UNet passes; (est.) = passes x {rows_[0]['s_per_forward']:.2f} s, the "
        "measured cost of one whole-image pass.",
        "",
        md_table(["sampler", "UNet passes", "PSNR dB", "SSIM", f"s / {h}x{w} image"], table),
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
    ap.add_argument("--pairs", type=Path, default=None, help="held-out pairs folder (default: bicubic pairs of held-out NIH)")
    ap.add_argument("--nih", type=Path, default=NIH_DIR, help="real NIH CXRs (held-out split) for bicubic pairs")
    ap.add_argument("--samplers", default=None, help="comma list (default: restoration.evaluate.SAMPLER_TABLE)")
    ap.add_argument("--images", type=int, default=4, help="held-out pairs, one fixed crop each")
    ap.add_argument("--crop", type=int, default=128, help="crop side in HQ px (a multiple of the model's size multiple)")
    ap.add_argument("--max-timed", type=int, default=4, help="time whole images for samplers up to this many passes")
    ap.add_argument("--target-db", type=float, default=0.3, help="allowed PSNR gap of the default to the best 50-step")
    add_common_args(ap, "restorer_samplers")
    args = ap.parse_args(argv)
    device = setup(args)
    if args.images < 1 or args.crop < 1 or args.max_timed < 0:
        raise SystemExit("--images and --crop must be >= 1, --max-timed >= 0")
    record = run_record(device)
    result = run(args, device)
    write_report(args.out, "restorer_samplers", {**result, "run": record}, markdown(result, record, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
