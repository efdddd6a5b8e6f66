"""Nodules through the restorer at full size: per-nodule contrast after/before inside the footprint, and a crop figure.

Usage:
    python benchmarks/restorer_nodules.py --ct example --ct ../shared/data/ct/lung-pet-ct-dx/Lung_Dx-A0002 \
        --images-per-ct 4 --drr-seed 9001 --figure docs/images/restorer_nodules.png --out runs/bench/restorer_nodules

Renders enhanced datasets with ``diffusionxray generate`` (``--drr-seed`` must differ from the training DRR set's,
so the poses were not trained on; ``--dataset`` uses existing ones instead) and measures each nodule with
``pipeline.nodule_preservation`` (the same code as ``diffusionxray evaluate-nodules``): the raw DRR as the model saw
it (windowed, bicubic-upsampled to the output size) vs the restored image. Two contrasts: against the nodule-free
twin (footprint mean of image - twin: the nodule's own signal; the primary one) and against a ring around the
footprint. Targets (issue 9): median ratio after/before >= 0.9, and no non-faint nodule below 0.5.
Figure: crops before | after with the box, nodules chosen evenly over the sorted twin ratios (lowest and highest
included), each labelled with its ratios.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from restorer_bench import (
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

TARGET_MEDIAN = 0.9


def measure_all(datasets: list[Path]) -> tuple[list[Any], dict[Path, tuple[Any, int, bool]]]:
    """Per-nodule contrasts of every dataset (tagged with it), and each dataset's (preprocess, scale, windowed)."""
    from pipeline.nodule_preservation import measure, model_of

    rows, models = [], {}
    for ds in datasets:
        enhanced_records(ds)
        try:
            models[ds] = model_of(ds)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(str(err)) from None
        rows += [(ds, r) for r in measure(ds, models[ds][0], scale=models[ds][1], windowed=models[ds][2])]
    if not rows:
        raise SystemExit("no nodule footprints in " + ", ".join(map(str, datasets)))
    return rows, models


def figure(rows: list[Any], models: dict[Path, tuple[Any, int, bool]], path: Path, n: int) -> Path:
    """Crops before | after (box drawn) of ``n`` nodules spread over the sorted ratios; written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from data.atomic import atomic_write_bytes
    from data.coco import read_coco
    from data.images import read_png16
    from pipeline.nodule_preservation import drr_in_model_space

    key = [(r.twin_ratio if r.twin_ratio is not None else r.ratio) for _, r in rows]
    order = np.argsort(np.nan_to_num(np.array(key, dtype=float), nan=-1.0))
    pick = [int(order[i]) for i in np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int))]
    per_row = 2  # nodules per figure row, each as a before | after pair
    nrows = (len(pick) + per_row - 1) // per_row
    fig, axes = plt.subplots(nrows, 2 * per_row, figsize=(2.3 * 2 * per_row, 2.5 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    cache: dict[Path, dict[str, Any]] = {}
    for i, k in enumerate(pick):
        row_i, c0 = divmod(i, per_row)
        c0 *= 2
        ds, r = rows[k]
        recs = cache.setdefault(ds, {rec.file_name: rec for rec in read_coco(ds / "annotations" / "coco.json")})
        rec = recs[r.file_name]
        nod = next(x for x in rec.nodules if x.nodule_id == r.nodule_id)
        pcfg, scale, windowed = models[ds]
        lq_size = (rec.attributes.get("enhanced") or {}).get("input_size") or None
        before = drr_in_model_space(read_png16(ds / rec.attributes["drr_file"]) / 65535.0, pcfg, lq_size, scale, windowed)
        after = read_png16(ds / rec.file_name) / 65535.0
        x, y, w, h = nod.bbox_xywh
        side = int(max(96, 3 * max(w, h)))
        cy, cx = y + h / 2, x + w / 2
        t = int(np.clip(cy - side / 2, 0, after.shape[0] - side))
        left = int(np.clip(cx - side / 2, 0, after.shape[1] - side))
        crops = [before[t : t + side, left : left + side], after[t : t + side, left : left + side]]
        lo, hi = np.percentile(np.concatenate([c.ravel() for c in crops]), [1, 99])  # one window for both
        for j, (crop, title) in enumerate(zip(crops, ("before (model input, upsampled)", "after (restored)"))):
            ax = axes[row_i, c0 + j]
            ax.axis("on")
            ax.imshow(crop, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.add_patch(Rectangle((x - left - 0.5, y - t - 0.5), w, h, fill=False, ec="#ff3b30", lw=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            if row_i == 0:
                ax.set_title(title, fontsize=8)
        twin = "n/a" if r.twin_ratio is None or not np.isfinite(r.twin_ratio) else f"{r.twin_ratio:.2f}"
        axes[row_i, c0].set_ylabel(
            f"twin {twin}, ring {r.ratio:.2f}" + (" (faint)" if r.faint else ""), fontsize=7, color="#b00" if r.faint else "k"
        )
    fig.suptitle("Nodules through the restorer: ratio after/before", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def markdown(summary: dict[str, Any], record: dict[str, Any], datasets: list[Path], fig: Path | None) -> str:
    """The contrast-ratio table and the target lines."""
    from pipeline.nodule_preservation import ERASED_BELOW

    def num(v: float | None, fmt: str = ".2f") -> str:
        return "n/a" if v is None else format(v, fmt)

    table, lines = [], []
    kinds = [("against the nodule-free twin (primary)", summary.get("twin")), ("against a ring around the footprint", summary)]
    for label, s in kinds:
        if s is None:
            continue
        table.append([label, summary["nodules"], summary["faint"], num(s["median_contrast_ratio"]),
                      f"{100 * (s['erased_fraction'] or 0):.0f}%", f"{s['non_faint_erased']} of {s['non_faint']}",
                      num(s["non_faint_min_ratio"])])  # fmt: skip
        med_ok = s["median_contrast_ratio"] is not None and s["median_contrast_ratio"] >= TARGET_MEDIAN
        lines.append(f"- {label}: median >= {TARGET_MEDIAN}: **{num(s['median_contrast_ratio'])}**, "
                     f"{'met' if med_ok else 'NOT met'}; no non-faint nodule below {ERASED_BELOW}: "
                     f"**{s['non_faint_erased']}** below, {'met' if s['non_faint_erased'] == 0 else 'NOT met'}")  # fmt: skip
    header = ["contrast", "nodules", "faint", "median ratio after/before", f"ratio < {ERASED_BELOW}",
              f"non-faint < {ERASED_BELOW}", "lowest non-faint ratio"]  # fmt: skip
    out = [
        "Datasets: " + ", ".join(f"`{d}`" for d in datasets) + ".",
        "",
        md_table(header, table),
        "",
        *lines,
    ]
    if fig is not None:
        out += ["", f"![nodule crops before and after restoration]({fig})"]
    out += ["", record_line(record)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Make or read the enhanced datasets, measure every nodule, write JSON + Markdown (+ figure), print the table."""
    from pipeline.nodule_preservation import summarize

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--figure", type=Path, default=None, help="crop figure PNG (e.g. docs/images/restorer_nodules.png)")
    ap.add_argument("--figure-nodules", type=int, default=8, help="nodules in the figure")
    add_common_args(ap, "restorer_nodules")
    args = ap.parse_args(argv)
    device = setup(args)
    record = run_record(device)
    datasets = ensure_datasets(args, device)
    rows, models = measure_all(datasets)
    summary = summarize([r for _, r in rows])
    for (ds, _), rec in zip(rows, summary["per_nodule"]):
        rec["dataset"] = str(ds)
    fig = figure(rows, models, args.figure, args.figure_nodules) if args.figure is not None else None
    payload = {"summary": summary, "datasets": [str(d) for d in datasets], "run": record}
    write_report(args.out, "restorer_nodules", payload, markdown(summary, record, datasets, fig))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
