"""Held-out PSNR/SSIM at 512 -> 1024: bicubic input, DDPM-HQ <- bicubic pairs, shipped model, on three pair kinds.

Usage (the coordinator's command; pairs folders made by ``diffusionxray make-pairs`` from the held-out split):
    python benchmarks/restorer_metrics.py --baseline runs/restorer/ddpm_hq_bicubic \
        --munit-pairs runs/restorer/pairs_munit_heldout --ddpm-lq-pairs runs/restorer/pairs_ddpm_lq_heldout \
        --max-images 6 --out runs/bench/restorer_metrics

Rows: the bicubic-upsampled input (the non-learned reference), DDPM-HQ trained on bicubic pairs (``--baseline``,
the paper's baseline) and the shipped model (``--shipped``, default the packaged one). Columns: held-out bicubic
pairs (made here from the held-out NIH CXRs: window, then antialiased bicubic 2x down, as in training), MUNIT-LQ
pairs and DDPM-LQ pairs. Every pair's HQ source must belong to a held-out patient (``restoration.splits``); a
training patient stops the run. PSNR/SSIM: scikit-image on [0, 1] images at 1024 px; the work is
``restoration.evaluate.evaluate_samplers`` (the same code as ``diffusionxray evaluate``), one image per call.
Target (issue 9): shipped >= +1.0 dB over its input on MUNIT-LQ and DDPM-LQ pairs, and above the baseline there.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

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

KIND_LABELS = {"bicubic": "bicubic pairs", "munit-lq": "MUNIT-LQ pairs", "ddpm-lq": "DDPM-LQ pairs"}
TARGET_KINDS = ("munit-lq", "ddpm-lq")


def sampler_for(path: Path, args: argparse.Namespace) -> Any:
    """The model's default sampler, or its scheduler with ``--steps``/``--strength`` put in."""
    from restoration.evaluate import SamplerSpec
    from restoration.pipeline_ddpm_hq import load_pipeline

    if args.steps is None and args.strength is None:
        return SamplerSpec.parse("default")
    cfg = (pipe := load_pipeline(path)).config
    return SamplerSpec(pipe.sampler_name, args.steps or int(cfg.num_inference_steps),
                       args.strength or float(cfg.strength))  # fmt: skip


def evaluate_kind(
    hq: list[Path], lq: list[Path] | None, models: dict[str, Path], args: argparse.Namespace, device: str
) -> dict[str, Any]:
    """Per image: PSNR/SSIM of the bicubic-upsampled input and of each model's restoration (one image per call).

    The work is ``restoration.evaluate.evaluate_samplers`` (HQ windowed at the model's HQ size, pairs folders mapped
    linearly, bicubic LQ made from the HQ when ``lq`` is None).
    """
    from restoration.ddpm_hq import ModelFolderError, ModelNotFoundError
    from restoration.evaluate import evaluate_samplers

    rows: list[dict[str, Any]] = [{"name": p.name} for p in hq]
    samplers: dict[str, str] = {}
    for label, path in models.items():
        try:
            res = evaluate_samplers(path, hq, [sampler_for(path, args)], lq, seed=args.seed, device=device, batch_size=1)
        except (ModelNotFoundError, ModelFolderError, ValueError) as err:
            raise SystemExit(" ".join(str(err).split())) from None
        run = res["runs"][0]
        samplers[label] = f"{run['sampler']} ({run['steps_run']} UNet passes)"
        for row, r in zip(rows, run["per_image"]):
            row["input"] = {"psnr": r["bicubic_psnr"], "ssim": r["bicubic_ssim"]}
            row[label] = {"psnr": r["psnr"], "ssim": r["ssim"], "seconds": r["seconds"]}
    return {"n": len(rows), "per_image": rows, "samplers": samplers, "mean": summarize(rows, ["input", *models])}


def pair_sizes(folder: Path) -> str:
    """"HQ h / LQ l" as the pairs folder's pairs.json records them (the evaluation resizes to the model's sizes)."""
    import json

    info = json.loads((Path(folder) / "pairs.json").read_text(encoding="utf-8"))
    return f"HQ {info.get('hq_size', '?')} / LQ {info.get('lq_size', '?')}"


def summarize(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Mean PSNR/SSIM per row label, and the mean paired PSNR gain over the input with its standard error."""
    out: dict[str, Any] = {}
    for label in labels:
        psnr = np.array([r[label]["psnr"] for r in rows])
        gain = psnr - np.array([r["input"]["psnr"] for r in rows])
        se = float(gain.std(ddof=1) / math.sqrt(len(gain))) if len(gain) > 1 else None
        out[label] = {
            "psnr": float(psnr.mean()), "ssim": float(np.mean([r[label]["ssim"] for r in rows])),
            "gain_db": float(gain.mean()), "gain_se_db": se,
        }  # fmt: skip
    return out


def targets(results: dict[str, Any], gain_db: float) -> list[dict[str, Any]]:
    """Issue 9's targets on the MUNIT-LQ and DDPM-LQ pairs, each with its measured value and met / not met."""
    checks = []
    for kind in TARGET_KINDS:
        if kind not in results or "shipped" not in results[kind]["mean"]:
            continue
        m = results[kind]["mean"]
        checks.append({
            "target": f"shipped >= +{gain_db:g} dB over its input on {KIND_LABELS[kind]}",
            "value_db": m["shipped"]["gain_db"], "met": m["shipped"]["gain_db"] >= gain_db,
        })  # fmt: skip
        if "baseline" in m:
            diff = m["shipped"]["psnr"] - m["baseline"]["psnr"]
            checks.append({
                "target": f"shipped above DDPM-HQ <- bicubic pairs on {KIND_LABELS[kind]}",
                "value_db": diff, "met": diff > 0,
            })  # fmt: skip
    return checks


def seconds(results: dict[str, Any], label: str) -> float:
    """Mean restore seconds per image of one model over every pair kind."""
    return float(np.mean([r[label]["seconds"] for res in results.values() for r in res["per_image"]]))


def markdown(results: dict[str, Any], checks: list[dict[str, Any]], record: dict[str, Any], args: argparse.Namespace,
             names: dict[str, str]) -> str:  # fmt: skip
    """The PSNR/SSIM table (rows = restorers, columns = pair kinds) and the target lines."""
    kinds = [k for k in KIND_LABELS if k in results]
    header = ["restorer \\ held-out pairs", *[f"{KIND_LABELS[k]} (n={results[k]['n']}, {results[k]['sizes']})" for k in kinds]]
    rows = []
    for label in ["input", *names]:
        cells = []
        for k in kinds:
            m = results[k]["mean"][label]
            se = "n/a" if m["gain_se_db"] is None else f"{m['gain_se_db']:.2f}"
            gain = "" if label == "input" else f" ({m['gain_db']:+.2f} ± {se})"
            cells.append(f"{m['psnr']:.2f} / {m['ssim']:.3f}{gain}")
        rows.append([names.get(label, "bicubic upsampling of the input (reference)"), *cells])
    lines = [
        "PSNR dB / SSIM on held-out patients at 512 -> 1024 (mean; in brackets the mean paired PSNR gain over the "
        "input ± its standard error).",
        "Samplers: " + "; ".join(f"{names[k]}: {v}" for k, v in next(iter(results.values()))["samplers"].items())
        + f"; seed {args.seed}. Mean seconds per image: "
        + ", ".join(f"{names[k]} {seconds(results, k):.2f} s" for k in names) + ".",
        "",
        md_table(header, rows),
        "",
    ]
    for c in checks:
        lines.append(f"- target: {c['target']}: **{c['value_db']:+.2f} dB**, {'met' if c['met'] else 'NOT met'}")
    lines += ["", record_line(record)]
    return "\n".join(lines)


def write_subset(dest: Path, nih: Path, n: int) -> None:
    """Symlink the first ``n`` held-out NIH CXRs and their patient table into ``dest`` (input for make-pairs)."""
    dest.mkdir(parents=True, exist_ok=True)
    table = next((t for t in (nih / "images.csv", nih.parent / "images.csv") if t.is_file()), None)
    if table is None:
        raise SystemExit(f"{nih}: no images.csv beside or above the images (patient table for the split)")
    for src in [table, *held_out_real(nih)[:n]]:
        link = dest / src.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src.resolve())
    print(f"linked {n} held-out CXRs and {table.name} into {dest}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, restore every held-out pair with every model, write JSON + Markdown, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shipped", type=Path, default=None, help="the shipped DDPM-HQ folder (default: the packaged one)")
    ap.add_argument("--baseline", type=Path, default=None, help="DDPM-HQ trained on bicubic pairs (optional row)")
    ap.add_argument("--nih", type=Path, default=NIH_DIR, help="real NIH CXRs (held-out split taken from it)")
    ap.add_argument("--bicubic-pairs", type=Path, default=None, help="held-out bicubic pairs folder (default: made here)")
    ap.add_argument("--munit-pairs", type=Path, default=None, help="held-out MUNIT-LQ pairs folder (make-pairs munit)")
    ap.add_argument("--ddpm-lq-pairs", type=Path, default=None, help="held-out DDPM-LQ pairs folder (make-pairs ddpm-lq)")
    ap.add_argument("--max-images", type=int, default=6, help="pairs per kind (first by name); ~5 s each per model on 2 cores")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    ap.add_argument("--strength", type=float, default=None, help="sampler strength (default: the model's)")
    ap.add_argument("--target-gain", type=float, default=1.0, help="dB over the input required on learned-LQ pairs")
    ap.add_argument("--write-subset", type=Path, default=None,
                    help="only link the first --max-images held-out NIH CXRs (+ images.csv) into this folder, for "
                    "`make-pairs ... --hq-dir FOLDER --split held_out`, and exit")  # fmt: skip
    add_common_args(ap, "restorer_metrics")
    args = ap.parse_args(argv)
    device = setup(args)
    if args.max_images < 1:
        raise SystemExit(f"--max-images must be >= 1, got {args.max_images}")
    if args.write_subset is not None:
        write_subset(args.write_subset, args.nih, args.max_images)
        return 0
    shipped = args.shipped or packaged_model()
    if shipped is None:
        raise SystemExit("--shipped: no packaged model in this checkout; pass --shipped MODEL_DIR")
    record = run_record(device)
    models: dict[str, Path] = {}
    names: dict[str, str] = {}
    if args.baseline is not None:
        models["baseline"], names["baseline"] = args.baseline, "DDPM-HQ <- bicubic pairs"
    models["shipped"], names["shipped"] = shipped, "shipped DDPM-HQ <- MUNIT-LQ + DDPM-LQ pairs"
    results: dict[str, Any] = {}
    if args.bicubic_pairs is not None:
        results["bicubic"] = evaluate_kind(*pairs_of(args.bicubic_pairs, args.max_images), models, args, device)
        results["bicubic"]["sizes"] = pair_sizes(args.bicubic_pairs)
    else:
        results["bicubic"] = evaluate_kind(held_out_real(args.nih)[: args.max_images], None, models, args, device)
        results["bicubic"]["sizes"] = "HQ at the model's side, LQ bicubic"
    for kind, folder in (("munit-lq", args.munit_pairs), ("ddpm-lq", args.ddpm_lq_pairs)):
        if folder is not None:
            results[kind] = evaluate_kind(*pairs_of(folder, args.max_images), models, args, device)
            results[kind]["sizes"] = pair_sizes(folder)
    checks = targets(results, args.target_gain)
    payload = {
        "results": results, "targets": checks, "run": record,
        "models": {k: str(m) for k, m in models.items()},
        "pairs": {"bicubic": str(args.bicubic_pairs or f"made here from {args.nih} (held-out split)"),
                  "munit-lq": str(args.munit_pairs), "ddpm-lq": str(args.ddpm_lq_pairs)},
    }  # fmt: skip
    write_report(args.out, "restorer_metrics", payload, markdown(results, checks, record, args, names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
