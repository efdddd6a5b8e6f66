"""Does restoration keep the nodules? Contrast inside each labelled footprint before vs after enhancement.

An enhanced dataset holds, per image, the raw DRR (``images_drr/``), the restored image (``images/``), usually
their nodule-free twins (``images_drr_nodule_free/``, ``images_nodule_free/``, restored with the same noise) and
the nodule footprints at the restored size (COCO). Both images are compared in the restorer's own intensity space:
the DRR is windowed exactly as the model saw it and bicubic-upsampled like its conditioning input, and the
restored PNG is the model output in [0, 1]. Two contrasts per nodule:

- ring: footprint mean minus the mean of a ring around it (needs no twin; background structure adds to it);
- twin: footprint mean of (image - its nodule-free twin): the nodule's own signal, background removed.

A restorer that erases nodules scores a ratio after/before near 0; one that keeps them scores about 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ERASED_BELOW = 0.5  # a nodule that keeps less than half its contrast counts as erased


@dataclass(frozen=True)
class NoduleContrast:
    """One nodule's contrasts ([0, 1] units) before and after restoration.

    Attributes:
        before, after: ring contrast (footprint mean - ring mean).
        twin_before, twin_after: footprint mean of image minus nodule-free twin (None without twins).
        conspicuity_before, conspicuity_after: ring contrast over the ring's standard deviation.
        faint: the dataset's ``faint`` flag (conspicuity below its threshold at render time).
    """

    file_name: str
    nodule_id: int
    before: float
    after: float
    conspicuity_before: float
    conspicuity_after: float
    twin_before: float | None = None
    twin_after: float | None = None
    faint: bool = False

    @property
    def ratio(self) -> float:
        """Ring contrast after / before (1 = kept, 0 = erased)."""
        return self.after / self.before if self.before != 0 else float("nan")

    @property
    def twin_ratio(self) -> float | None:
        """Twin contrast after / before (None without twins)."""
        if self.twin_before is None or self.twin_after is None:
            return None
        return self.twin_after / self.twin_before if self.twin_before != 0 else float("nan")


def _ring(footprint: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(footprint, iterations=width) & ~footprint


def drr_in_model_space(
    drr01: np.ndarray, preprocess: Any, lq_size: int | None, scale: int, windowed: bool = True
) -> np.ndarray:
    """The raw DRR as the restorer sees it, at the restored size: windowed, resized to the model's input size,
    bicubic-upsampled by ``scale``, back to [0, 1] (``windowed=False``: un-windowed again, the output scale of an
    anchored restorer)."""
    from restoration.pipeline_ddpm_hq import conditioning_image

    return conditioning_image(drr01.astype(np.float32), preprocess, lq_size, scale, windowed=windowed)


def _read01(path: Path) -> np.ndarray:
    from data.images import read_png16

    return read_png16(path).astype(np.float64) / 65535.0


def measure(
    dataset_dir: str | Path, preprocess: Any, ring: int = 4, scale: int = 2, windowed: bool = True
) -> list[NoduleContrast]:
    """Per-nodule contrast before/after restoration for every image of an enhanced dataset.

    Args:
        dataset_dir: output of ``diffusionxray generate`` with enhancement.
        preprocess: the restorer's ``PreprocessConfig`` (its percentile window).
        scale: the restorer's super-resolution factor.
        ring: width in restored pixels of the background ring around each footprint.
        windowed: the restorer's outputs are in its windowed space (False: anchored, in the DRR's scale).
    """
    from data.coco import read_coco
    from restoration.evaluate import nodule_contrast

    root = Path(dataset_dir)
    coco = root / "annotations" / "coco.json"
    if not coco.is_file():
        raise FileNotFoundError(f"{root}: no annotations/coco.json (not a generated dataset)")
    out: list[NoduleContrast] = []
    for rec in read_coco(coco):
        drr_name = rec.attributes.get("drr_file")
        if not drr_name:
            raise ValueError(f"{root}: {rec.file_name} has no raw DRR (was the dataset made with enhancement?)")
        enhanced = rec.attributes.get("enhanced") or {}
        lq_size = enhanced.get("input_size") or None

        def before_after(drr_file: str, image_file: str) -> tuple[np.ndarray, np.ndarray]:
            before = drr_in_model_space(_read01(root / drr_file), preprocess, lq_size, scale, windowed)
            return before, _read01(root / image_file)

        before, after = before_after(drr_name, rec.file_name)
        if before.shape != after.shape:
            raise ValueError(
                f"{root}: {rec.file_name} is {after.shape} but its DRR maps to {before.shape} at the model's scale"
            )
        twin_files = (rec.attributes.get("drr_nodule_free_file"), rec.attributes.get("nodule_free_file"))
        twins = before_after(*twin_files) if all(twin_files) else None  # type: ignore[arg-type]
        for nod in rec.nodules:
            if nod.footprint is None or not nod.footprint.any():
                continue
            fp = nod.footprint
            rmask = _ring(fp, ring)
            c0, c1 = nodule_contrast(before, fp, rmask), nodule_contrast(after, fp, rmask)
            s0, s1 = before[rmask].std() + 1e-6, after[rmask].std() + 1e-6
            t0 = t1 = None
            if twins is not None:
                t0 = float((before - twins[0])[fp].mean())
                t1 = float((after - twins[1])[fp].mean())
            faint = bool(nod.attributes.get("faint", False))
            out.append(NoduleContrast(rec.file_name, nod.nodule_id, c0, c1, c0 / s0, c1 / s1, t0, t1, faint))
    return out


def _ratio_stats(ratios: list[float | None], faint: list[bool]) -> dict[str, Any]:
    """Median ratio, erased share, and the non-faint nodules' minimum and count below ERASED_BELOW."""
    r = np.array([np.nan if v is None else v for v in ratios], dtype=np.float64)
    strong = r[~np.array(faint, dtype=bool)]
    strong = strong[np.isfinite(strong)]
    return {
        "median_contrast_ratio": float(np.nanmedian(r)) if np.isfinite(r).any() else None,
        "erased_fraction": float(np.mean(r[np.isfinite(r)] < ERASED_BELOW)) if np.isfinite(r).any() else None,
        "non_faint": int(strong.size),
        "non_faint_min_ratio": float(strong.min()) if strong.size else None,
        "non_faint_erased": int(np.sum(strong < ERASED_BELOW)),
    }


def summarize(rows: list[NoduleContrast]) -> dict[str, Any]:
    """Ring- and twin-contrast ratio statistics, mean contrasts and per-nodule values (JSON-able)."""
    if not rows:
        return {"nodules": 0}
    faint = [r.faint for r in rows]
    out: dict[str, Any] = {
        "nodules": len(rows),
        "faint": int(sum(faint)),
        **_ratio_stats([r.ratio for r in rows], faint),
        "mean_contrast_before": float(np.mean([r.before for r in rows])),
        "mean_contrast_after": float(np.mean([r.after for r in rows])),
        "median_conspicuity_before": float(np.median([r.conspicuity_before for r in rows])),
        "median_conspicuity_after": float(np.median([r.conspicuity_after for r in rows])),
    }
    if all(r.twin_ratio is not None for r in rows):
        out["twin"] = _ratio_stats([r.twin_ratio for r in rows], faint)
    out["per_nodule"] = [
        {**asdict(r), "ratio": r.ratio, "twin_ratio": r.twin_ratio} for r in rows
    ]
    for rec in out["per_nodule"]:  # NaN (zero contrast before) is not JSON
        for key in ("ratio", "twin_ratio"):
            if isinstance(rec[key], float) and not np.isfinite(rec[key]):
                rec[key] = None
    return out


def model_of(dataset_dir: str | Path, model_dir: str | Path | None = None) -> tuple[Any, int, bool]:
    """(preprocess, scale, windowed) of the restorer a dataset was enhanced with (or of ``model_dir``).

    ``windowed`` is False for a restorer with low-frequency anchoring (outputs in the DRR's intensity scale).

    Raises:
        ValueError: the dataset was not enhanced (one line).
        ModelNotFoundError / ModelFolderError: the model is missing or damaged (one line).
    """
    from data.coco import read_coco
    from pipeline.enhancer import resolve_model_dir
    from restoration.pipeline_ddpm_hq import load_pipeline

    root = Path(dataset_dir)
    coco = root / "annotations" / "coco.json"
    if not coco.is_file():
        raise ValueError(f"{root}: no annotations/coco.json (not a generated dataset)")
    if model_dir is None:
        used = [(r.attributes.get("enhanced") or {}).get("model_dir") for r in read_coco(coco)]
        if not any(used):
            raise ValueError(f"{root}: not enhanced (no restored images to compare)")
        model_dir = next(u for u in used if u)
    pipe = load_pipeline(resolve_model_dir(model_dir))
    return pipe.preprocess_config, int(pipe.config.scale), not float(pipe.config.anchor_sigma) > 0
