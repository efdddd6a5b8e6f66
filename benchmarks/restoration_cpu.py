"""CPU sanity run of DDPM-HQ: train on real MHH COVID-19 CXRs (patient split, bicubic pairs), evaluate vs bicubic.

Usage (run in the background; resumes from the latest checkpoint if re-run with the same --out):
    PYTHONPATH=. nohup python3 benchmarks/restoration_cpu.py > runs/restoration_cpu.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cxr" / "mhh-covid-19"


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate held-out pairs with DDIM/DPM-Solver++ (PSNR, SSIM, s/image), print a table, write JSON + figure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of real HQ CXRs with data.csv")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "restoration_cpu", help="run folder")
    ap.add_argument("--lq-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--channels", type=str, default="32,64,64,128")
    ap.add_argument("--residual-scale", type=float, default=0.0, help="0 = diffuse the image (paper); >0 residual")
    ap.add_argument("--prediction-type", default="epsilon", help="epsilon (paper), sample or v_prediction")
    ap.add_argument("--pair-source", default="bicubic", help="bicubic, classical or pairs_dir (with --lq-dir)")
    ap.add_argument("--lq-dir", type=Path, default=None, help="precomputed LQ images (pair source pairs_dir)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    ap.add_argument(
        "--eval",
        type=str,
        default="ddim:20,ddim:50,dpmsolver++:20,ddim:20:0.4,ddim:50:0.4,dpmsolver++:20:0.4",
        help="comma list of scheduler:steps[:strength] (strength < 1 starts from the noised bicubic upsample)",
    )
    ap.add_argument("--figure-spec", type=str, default="ddim:20:0.4", help="which --eval entry draws the figure")
    ap.add_argument("--figure", type=Path, default=REPO / "docs" / "images" / "restoration_cpu.png")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from data.atomic import atomic_write_json
    from restoration.evaluate import SamplerSpec, evaluate_samplers
    from restoration.preprocess import list_images, split_by_source
    from restoration.train_ddpm_hq import TrainConfig, group_function, train

    cfg = TrainConfig(
        hq_dir=str(args.data),
        output_dir=str(args.out),
        pair_source=args.pair_source,
        lq_dir=str(args.lq_dir) if args.lq_dir else None,
        residual_scale=args.residual_scale,
        prediction_type=args.prediction_type,
        val_fraction=0.2,
        group_by="mhh",
        lq_size=args.lq_size,
        block_out_channels=tuple(int(c) for c in args.channels.split(",")),
        layers_per_block=1,
        norm_num_groups=16,
        batch_size=args.batch,
        lr=args.lr,
        lr_warmup_steps=100,
        max_train_steps=args.steps,
        checkpointing_steps=250,
        checkpoints_total_limit=2,
        resume=True,
        validation_steps=250,
        num_val_images=8,
        val_inference_steps=20,
        cpu=True,
        progress=False,
        log_every=25,
    )
    t0 = time.time()
    model_dir = train(cfg)
    train_s = time.time() - t0

    paths = list_images(args.data)
    train_paths, val_paths = split_by_source(paths, cfg.val_fraction, cfg.split_seed, group_function(cfg, paths))
    results: dict = {
        "train_images": len(train_paths),
        "val_images": len(val_paths),
        "hq_size": cfg.lq_size * cfg.scale,
        "steps": cfg.max_train_steps,
        "train_seconds_this_invocation": round(train_s, 1),
        "config": cfg.to_dict(),
        "eval": {},
    }
    history = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    results["val_history"] = [h for h in history if "val/psnr" in h]
    results["train_log_last"] = next((h for h in reversed(history) if "loss" in h), None)
    specs = [SamplerSpec.parse(spec) for spec in args.eval.split(",")]
    fig = SamplerSpec.parse(args.figure_spec)
    specs = sorted(specs, key=lambda s: s != fig)  # evaluate_samplers draws the figure with the first sampler
    sweep = evaluate_samplers(model_dir, val_paths, specs, seed=0, figure_path=args.figure if fig in specs else None)
    rows = [("bicubic upsampling (LQ)", sweep["bicubic"]["psnr"], sweep["bicubic"]["ssim"], float("nan"))]
    for r in sweep["runs"]:
        results["eval"][r["sampler"]] = {k: v for k, v in r.items() if k != "per_image"}
        start = "pure noise" if r["strength"] == 1.0 else f"strength {r['strength']:g} ({r['steps_run']} steps run)"
        rows.append((f"DDPM-HQ {r['scheduler']} {r['steps']} steps, {start}", r["model"]["psnr"], r["model"]["ssim"],
                     r["seconds"]["per_image"]))  # fmt: skip
    header = f"method (val: {len(val_paths)} CXRs, {cfg.lq_size}->{cfg.lq_size * cfg.scale} px)"
    table = [f"| {header} | PSNR dB | SSIM | s/image |", "|---|---|---|---|"]
    table += [f"| {m} | {p:.2f} | {s:.4f} | {'-' if t != t else f'{t:.3f}'} |" for m, p, s, t in rows]
    print("\n".join(table))
    results["table"] = table
    atomic_write_json(args.out / "results.json", results)
    print(f"figure: {args.figure}\nresults: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
