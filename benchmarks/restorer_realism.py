"""Realism of enhanced vs raw DRRs against held-out real NIH CXRs (``diffusionxray evaluate-realism``), side by side.

Usage:
    python benchmarks/restorer_realism.py --ct example --ct ../shared/data/ct/lung-pet-ct-dx/Lung_Dx-A0002 \
        --images-per-ct 4 --drr-seed 9001 --out runs/bench/restorer_realism

The enhanced datasets are the ones ``restorer_nodules.py`` makes with the same options (generate resumes, so the
second script reuses them) or ``--dataset`` folders. Their raw DRRs (``images_drr/``) and enhanced images
(``images/``) are gathered (symlinks) into two folders and each is judged by ``evaluate-realism ... --real-part
held-out`` against the held-out patients of the real NIH set; the NIH-vs-NIH row is that command's own control.
"Closer" per figure: AUC nearer 0.5, smaller spectrum distance and lung-histogram distance, fine-detail ratio nearer
1 (in log), background share nearer the real one. Target (issue 9): enhanced closer than raw on every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from restorer_bench import (
    NIH_DIR,
    REPO,
    add_common_args,
    add_dataset_args,
    enhanced_records,
    ensure_datasets,
    md_table,
    record_line,
    run_record,
    setup,
    write_report,
)

FIGURES = ("classifier_auc", "spectrum_distance", "fine_detail_ratio", "lung_histogram_distance", "background_share")


def gather(datasets: list[Path], folder_attr: str | None, dest: Path) -> int:
    """Symlink every dataset's images of one kind (``drr_file`` or the record's own image) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():  # a rerun with other datasets must not keep stale links
        if old.is_symlink():
            old.unlink()
    n = 0
    for k, ds in enumerate(datasets):
        for rec in enhanced_records(ds):
            src = (ds / (rec.attributes[folder_attr] if folder_attr else rec.file_name)).resolve()
            (dest / f"{k:02d}_{src.name}").symlink_to(src)
            n += 1
    return n


def evaluate(candidates: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One ``diffusionxray evaluate-realism CANDIDATES NIH --real-part held-out`` run; its realism.json."""
    cmd = [sys.executable, "-m", "pipeline.cli", "evaluate-realism", str(candidates), str(args.nih), "--out", str(out),
           "--real-part", "held-out", "--size", str(args.analysis_size), "--epochs", str(args.epochs),
           "--seed", str(args.seed)]  # fmt: skip
    print("$ " + " ".join(cmd), file=sys.stderr)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if subprocess.run(cmd, cwd=REPO, env=env).returncode != 0:
        raise SystemExit(f"evaluate-realism failed on {candidates} (see its message above)")
    return json.loads((out / "realism.json").read_text(encoding="utf-8"))


def closer(key: str, enhanced: dict[str, Any], raw: dict[str, Any]) -> bool:
    """Whether the enhanced set is closer to real than the raw one on figure ``key``."""
    def gap(m: dict[str, Any]) -> float:
        v = float(m[key])
        if key == "classifier_auc":
            return abs(v - 0.5)
        if key == "fine_detail_ratio":
            return abs(math.log(max(v, 1e-12)))
        if key == "background_share":
            return abs(v - float(m["background_share_reference"]))
        return v

    return gap(enhanced) < gap(raw)


def markdown(reports: dict[str, dict[str, Any]], record: dict[str, Any], datasets: list[Path]) -> str:
    """Raw | enhanced | NIH-vs-NIH rows and the per-figure verdict."""
    raw, enh = reports["raw"]["candidates_vs_real"], reports["enhanced"]["candidates_vs_real"]
    control = reports["enhanced"]["real_vs_real"]
    real_n = reports["enhanced"]["n_real"]

    def row(label: str, m: dict[str, Any]) -> list[Any]:
        return [label, m["n"], *(f"{m[k]:.3f}" for k in FIGURES[:4]), f"{100 * m['background_share']:.1f}%"]

    header = ["images vs held-out real NIH CXRs", "n", "classifier AUC", "spectrum distance", "fine-detail ratio",
              "lung histogram EMD", "background share"]  # fmt: skip
    table = md_table(header, [
        row("raw DRRs (`images_drr/`)", raw), row("enhanced (`images/`)", enh),
        row("control: NIH half vs NIH half (by patient)", control),
    ])  # fmt: skip
    verdict = {k: closer(k, enh, raw) for k in FIGURES}
    lines = [
        f"{real_n} held-out real NIH CXRs; datasets: " + ", ".join(f"`{d}`" for d in datasets) + ".",
        f"Real background share: {100 * enh['background_share_reference']:.1f}%.",
        "",
        table,
        "",
        "- enhanced closer to real than raw: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in verdict.items()),
        f"- target (every figure closer): {'met' if all(verdict.values()) else 'NOT met'}",
        "",
        record_line(record),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Make or read the datasets, judge raw and enhanced images, write JSON + Markdown, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--nih", type=Path, default=NIH_DIR, help="real NIH CXRs (the held-out part is used)")
    ap.add_argument("--analysis-size", type=int, default=512, help="evaluate-realism --size")
    ap.add_argument("--epochs", type=int, default=8, help="evaluate-realism --epochs (classifier budget)")
    add_common_args(ap, "restorer_realism")
    args = ap.parse_args(argv)
    device = setup(args)
    record = run_record(device)
    datasets = ensure_datasets(args, device)
    reports = {}
    for name, attr in (("raw", "drr_file"), ("enhanced", None)):
        folder = args.out / "sets" / name
        if gather(datasets, attr, folder) < 4:
            raise SystemExit(f"{name}: evaluate-realism needs at least 4 images; raise --images-per-ct or add --ct")
        reports[name] = evaluate(folder, args, args.out / f"realism_{name}")
    payload = {"raw": reports["raw"], "enhanced": reports["enhanced"],
               "closer": {k: closer(k, reports["enhanced"]["candidates_vs_real"], reports["raw"]["candidates_vs_real"])
                          for k in FIGURES},
               "datasets": [str(d) for d in datasets], "run": record}  # fmt: skip
    write_report(args.out, "restorer_realism", payload, markdown(reports, record, datasets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
