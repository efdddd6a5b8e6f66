"""Display settings judged by the realism figures: re-present stored physical DRRs, compare with real CXRs.

``generate`` keeps every sample's physical image (``images_physical/``) and its collimated field, so another
``DisplayConfig`` can be applied without rendering again (the same ``fit_window`` + ``present`` as
``pipeline.sample.presented``, the exposed mask rebuilt from the recorded field). Each variant is judged with the
five figures of ``restoration/realism.py`` against one part of the real set — tune on ``train`` (the patients the
restorer may train on), report on ``held-out`` — over several classifier seeds, because with few CTs the
two-sample AUC varies by ±0.15 from seed to seed.

    python benchmarks/tune_display.py out/ds1 out/ds2 --real ../shared/data/cxr/nih-chestxray14/images \
        --part train --variants '[{}, {"latitude": 0.7}]' --seeds 0 1 2 3 --json tune.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIGURES = ("classifier_auc", "spectrum_distance", "fine_detail_ratio", "lung_histogram_distance", "background_share")


Sample = tuple[str, np.ndarray, np.ndarray, np.ndarray, float]


def load_physical(folders: list[Path]) -> list[Sample]:
    """(CT id, physical L, L the window is fitted on, exposed mask, pixel mm) of every recorded sample.

    As ``generate`` does, the display window comes from the nodule-free twin when the dataset kept one.
    """
    from PIL import Image

    from ct_projection.framing import Field

    out = []
    for folder in folders:
        l_max = json.loads((folder / "config.json").read_text())["attenuation"]["l_max"]
        for line in (folder / "manifest.jsonl").read_text().splitlines():
            attrs = json.loads(line)["record"]["attributes"]
            if "physical_file" not in attrs:
                raise SystemExit(f"{folder}: no physical images (rendered with --display raw?)")
            pixels = np.asarray(Image.open(folder / attrs["physical_file"]), dtype=np.float64)
            twin_file = attrs.get("physical_nodule_free_file")
            twin = pixels if twin_file is None else np.asarray(Image.open(folder / twin_file), dtype=np.float64)
            x, y, w, h = attrs["collimation"]["field_xywh"]
            field = Field(top=y, bottom=y + h, left=x, right=x + w, sigma_px=attrs["collimation"]["penumbra_sigma_px"])
            exposed = field.weight(pixels.shape[0]) >= 0.5  # as pipeline.sample: the collimated field
            scale = l_max / 65535.0
            out.append((attrs["ct"], pixels * scale, twin * scale, exposed, float(attrs["pixel_spacing_mm"])))
    return out


def present_all(samples: list[Sample], settings: dict[str, Any]) -> list[np.ndarray]:
    """Every sample in clinical presentation with ``DisplayConfig(**settings)``."""
    from ct_projection.display import DisplayConfig, fit_window, present

    cfg = replace(DisplayConfig(), **settings)
    return [present(L, cfg, fit_window(W, cfg, exp), px, exp) for _, L, W, exp, px in samples]


def main() -> None:
    """Judge each variant on each seed; print one JSON line per (variant, seed) and the means."""
    from restoration.preprocess import list_images
    from restoration.realism import RealismConfig, compare_sets, find_patient_table, load_set, prepare
    from restoration.splits import split_real
    from restoration.two_sample import TwoSampleConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+", type=Path, help="generate output folders (with images_physical/)")
    ap.add_argument("--real", type=Path, required=True, help="real CXR folder (patients from images.csv)")
    ap.add_argument("--part", choices=("train", "held-out"), default="train")
    ap.add_argument("--variants", default="[{}]", help="JSON list of DisplayConfig overrides ({} = the default)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--json", type=Path, help="write all results here")
    args = ap.parse_args()

    samples = load_physical(args.datasets)
    groups = [s[0] for s in samples]
    train, held = split_real(list_images(args.real))
    real_paths = train if args.part == "train" else held
    table = find_patient_table(args.real)
    real_groups = [table.get(p.stem, p.stem) for p in real_paths]
    rcfg0 = RealismConfig()
    ref, ref_masks = load_set(real_paths, rcfg0.size, rcfg0.field)
    results = []
    for settings in json.loads(args.variants):
        shown = present_all(samples, settings)
        rows = []
        for seed in args.seeds:
            rcfg = RealismConfig(seed=seed, classifier=TwoSampleConfig(repeats=1))  # one run per seed
            prepared = [prepare(im, rcfg.size, rcfg.field) for im in shown]
            cand, masks = np.stack([p[0] for p in prepared]), np.stack([p[1] for p in prepared])
            r = compare_sets(cand, ref, groups, real_groups, rcfg, masks, ref_masks)
            rows.append({k: float(r[k]) for k in FIGURES})
            print(json.dumps({"variant": settings, "seed": seed, **{k: round(v, 4) for k, v in rows[-1].items()}}), flush=True)
        mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in FIGURES}
        spread = [round(min(r["classifier_auc"] for r in rows), 3), round(max(r["classifier_auc"] for r in rows), 3)]
        results.append({"variant": settings, "mean": mean, "auc_range": spread, "per_seed": rows})
        print(json.dumps({"variant": settings, "mean": mean, "auc_range": spread}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"part": args.part, "n_candidates": len(samples), "n_real": len(real_paths),
                                         "n_cts": len(set(groups)), "results": results}, indent=1))


if __name__ == "__main__":
    main()
