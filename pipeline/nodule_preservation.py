"""Does restoration keep the nodules? Contrast inside each labelled footprint before vs after ``generate --enhance``.

An enhanced dataset holds, per image, the raw DRR (``images_drr/``), the restored image (``images/``) and the
nodule footprints at the restored size (COCO). Both images are compared in the restorer's own intensity space:
the DRR is windowed exactly as the model saw it and bicubic-upsampled like its conditioning input, and the
restored PNG is the model output mapped from [-1, 1] to [0, 1]. A restorer that erases nodules scores a contrast
ratio near 0; one that keeps them scores about 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ERASED_BELOW = 0.5  # a nodule that keeps less than half its contrast counts as erased


@dataclass(frozen=True)
class NoduleContrast:
    """One nodule's contrast (footprint mean − surrounding ring mean, [0, 1] units) before and after."""

    file_name: str
    nodule_id: int
    before: float
    after: float
    conspicuity_before: float
    conspicuity_after: float

    @property
    def ratio(self) -> float:
        """after / before (1 = contrast kept, 0 = erased)."""
        return self.after / self.before if self.before != 0 else float("nan")


def _ring(footprint: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(footprint, iterations=width) & ~footprint


def drr_in_model_space(drr01: np.ndarray, preprocess: Any, lq_size: int | None, scale: int) -> np.ndarray:
    """The raw DRR as the restorer sees it, at the restored size: windowed, resized to the model's input size,
    bicubic-upsampled by ``scale``, back to [0, 1]."""
    from restoration.enhance import conditioning_image

    return conditioning_image(drr01.astype(np.float32), preprocess, lq_size, scale)


def measure(dataset_dir: str | Path, preprocess: Any, ring: int = 4, scale: int = 2) -> list[NoduleContrast]:
    """Per-nodule contrast before/after restoration for every image of an enhanced dataset.

    Args:
        dataset_dir: output of ``diffusionxray generate --enhance``.
        preprocess: the restorer's ``PreprocessConfig`` (its percentile window).
        scale: the restorer's super-resolution factor (``DDPMHQConfig.scale``).
        ring: width in restored pixels of the background ring around each footprint.
    """
    from data.coco import read_coco
    from data.images import read_png16
    from restoration.evaluate import nodule_contrast

    root = Path(dataset_dir)
    coco = root / "annotations" / "coco.json"
    if not coco.is_file():
        raise FileNotFoundError(f"{root}: no annotations/coco.json (not a generated dataset)")
    out: list[NoduleContrast] = []
    for rec in read_coco(coco):
        drr_name = rec.attributes.get("drr_file")
        if not drr_name:
            raise ValueError(f"{root}: {rec.file_name} has no raw DRR (was the dataset made with --enhance?)")
        after = read_png16(root / rec.file_name).astype(np.float64) / 65535.0
        drr = read_png16(root / drr_name).astype(np.float64) / 65535.0
        enhanced = rec.attributes.get("enhanced") or {}
        before = drr_in_model_space(drr, preprocess, enhanced.get("input_size"), scale)
        if before.shape != after.shape:
            raise ValueError(
                f"{root}: {rec.file_name} is {after.shape} but its DRR maps to {before.shape} at the model's scale"
            )
        for nod in rec.nodules:
            if nod.footprint is None or not nod.footprint.any():
                continue
            rmask = _ring(nod.footprint, ring)
            c0, c1 = nodule_contrast(before, nod.footprint, rmask), nodule_contrast(after, nod.footprint, rmask)
            s0, s1 = before[rmask].std() + 1e-6, after[rmask].std() + 1e-6
            out.append(NoduleContrast(rec.file_name, nod.nodule_id, c0, c1, c0 / s0, c1 / s1))
    return out


def summarize(rows: list[NoduleContrast]) -> dict[str, Any]:
    """Median contrast ratio, share of erased nodules and mean contrasts (JSON-able)."""
    if not rows:
        return {"nodules": 0}
    ratios = np.array([r.ratio for r in rows], dtype=np.float64)
    return {
        "nodules": len(rows),
        "median_contrast_ratio": float(np.nanmedian(ratios)),
        "erased_fraction": float(np.mean(ratios < ERASED_BELOW)),
        "mean_contrast_before": float(np.mean([r.before for r in rows])),
        "mean_contrast_after": float(np.mean([r.after for r in rows])),
        "median_conspicuity_before": float(np.median([r.conspicuity_before for r in rows])),
        "median_conspicuity_after": float(np.median([r.conspicuity_after for r in rows])),
        "per_nodule": [
            {"file_name": r.file_name, "nodule_id": r.nodule_id, "before": r.before, "after": r.after, "ratio": r.ratio}
            for r in rows
        ],
    }
