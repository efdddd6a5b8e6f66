"""How radiograph-like a set of images is, measured against real chest radiographs, without downloaded weights.

Every image is put on one common scale first: central square crop (a chest radiograph's field of view, ~43 cm,
fills the image in both sets), area-resized to ``size`` px, then a per-image intensity window
``(x - p0.1) / (p99.5 - p0.1)`` clipped to [0, 1] (bright = attenuating, as radiographs are displayed). With
``field="exposed"`` (default) every figure is taken inside each image's exposed field (``realism_field``: the image
minus its unexposed, collimated border, shrunk by a margin; the window too), for both sets alike. With
``real_part="held-out"`` only the held-out patients of REAL (``restoration.splits``) are used. Then:

1. classifier two-sample test (``two_sample.py``): ROC AUC of a small CNN trained from scratch on crops of the
   images at half that size, the mean of 4 independently seeded runs (each run's AUC is reported too);
   0.5 = indistinguishable;
2. radially averaged power spectrum distance: RMS over frequency bins of log10(mean spectrum A / mean spectrum B),
   each image standardised (zero mean, unit variance) and Hann-windowed, bins 1/size apart from DC to Nyquist;
3. fine-detail energy ratio: median over images of the mean energy of ``x - gaussian(x, FINE_SIGMA_PX)`` inside
   the central region (8 % border excluded), set A over set B (medians: a few images with text or wires would
   dominate means);
4. lung-field intensity histogram distance: earth mover's (Wasserstein-1) distance between the pooled windowed
   intensities of two fixed lung windows (rows 25–65 %, columns 14–42 % and 58–86 % of a frontal chest image). No
   segmentation model: on a centred frontal radiograph both windows lie inside the lungs; on an image that is not
   framed like one they do not, and the distance says so;
5. background share: fraction of pixels below ``BACKGROUND_LEVEL`` of the window (near-black: unexposed or air).

Each metric is also computed real-vs-real (REAL split in two halves by patient) as the control. The classifier keeps
each candidate CT (and each real patient) on one side of its folds (:func:`candidate_groups`).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from restoration.splits import find_patient_table, patient_table  # noqa: F401  (re-exported)
from restoration.preprocess import list_images, load_grayscale, resize_image, resize_square, split_by_source
from restoration.realism_field import exposed_field
from restoration.two_sample import TwoSampleConfig, classifier_two_sample_test

BACKGROUND_LEVEL = 0.05  # windowed intensity below which a pixel counts as background (near-black)
FINE_SIGMA_PX = 2.0  # Gaussian sigma (analysis px) separating fine detail from the rest
BORDER = 0.08  # fraction of each side left out of the fine-detail region (frame edges are not detail)
LUNG_ROWS = (0.25, 0.65)
LUNG_COLS = ((0.14, 0.42), (0.58, 0.86))
HIST_BINS = 64
FIELDS = ("exposed", "whole")
REAL_PARTS = ("all", "held-out")
FIELD_MARGIN = 8 / 512  # exposed field shrunk by this share of the side: penumbra + fine-detail filter (8 px at 512)
TAPER_SIGMA_PX = 4.0  # soft edge of the spectrum's field taper (analysis px)


@dataclass(frozen=True)
class RealismConfig:
    """Settings of ``evaluate_realism`` (recorded in its report).

    Args:
        size: analysis side in px (the classifier works at size // 2).
        max_images: at most this many images per set (a seeded choice) to bound CPU time.
        seed: seeds the image choice, the real/real split and the classifier.
        classifier: the two-sample test's budget.
        field: ``exposed`` (measure inside each image's exposed field, collimated border left out) or ``whole``.
        real_part: ``all`` of REAL, or only its ``held-out`` patients (those no shipped model trains on).
    """

    size: int = 512
    max_images: int = 200
    seed: int = 0
    classifier: TwoSampleConfig = TwoSampleConfig(repeats=4)
    field: str = "exposed"
    real_part: str = "all"

    def __post_init__(self) -> None:
        if self.size < 2 * self.classifier.crop:
            raise ValueError(f"size must be at least twice the classifier crop ({2 * self.classifier.crop}), got {self.size}")
        if self.max_images < 4:
            raise ValueError(f"max_images must be >= 4, got {self.max_images}")
        if self.field not in FIELDS:
            raise ValueError(f"--field: unknown value {self.field!r}: expected one of {', '.join(FIELDS)}")
        if self.real_part not in REAL_PARTS:
            raise ValueError(f"--real-part: unknown value {self.real_part!r}: expected one of {', '.join(REAL_PARTS)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON reports."""
        return {**asdict(self), "classifier": self.classifier.to_dict()}


# ------------------------------------------------------------------------------------------ loading


def window(img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-image window p0.1 → 0, p99.5 → 1 (of the pixels in ``mask``, default all), clipped (flat → all zeros)."""
    x = np.asarray(img, dtype=np.float32)
    sample = x if mask is None or mask.sum() < 16 else x[mask]
    lo, hi = np.percentile(sample, [0.1, 99.5])
    if not hi > lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def prepare(img01: np.ndarray, size: int, field: str = "whole") -> tuple[np.ndarray, np.ndarray]:
    """[0, 1] radiograph → (central square area-resized to size x size and windowed, its field mask)."""
    if field == "exposed":
        mask = exposed_field(img01, size, int(round(FIELD_MARGIN * size)))
    else:
        mask = np.ones((size, size), dtype=bool)
    return window(resize_square(img01, size), mask), mask


def load_set(paths: Sequence[Path], size: int, field: str = "whole") -> tuple[np.ndarray, np.ndarray]:
    """Images at the analysis scale (N x size x size float32) and their field masks (bool)."""
    if not paths:
        return np.zeros((0, size, size), np.float32), np.ones((0, size, size), bool)
    pairs = [prepare(load_grayscale(p), size, field) for p in paths]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _masks(images: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """The given masks, or all True."""
    return np.ones(images.shape, dtype=bool) if masks is None else np.asarray(masks, dtype=bool)


def choose(paths: Sequence[Path], n: int, seed: int) -> list[Path]:
    """At most ``n`` paths, a seeded choice independent of listing order, returned sorted."""
    items = sorted(paths)
    if len(items) <= n:
        return items
    keep = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return sorted(items[i] for i in keep)


# ------------------------------------------------------------------------------------------ metrics


def field_taper(mask: np.ndarray) -> np.ndarray:
    """1 well inside the field, falling smoothly to ~0 at its edge (all ones for a full field)."""
    from scipy import ndimage

    if mask.all():
        return np.ones(mask.shape)
    inner = ndimage.binary_erosion(mask, iterations=int(2 * TAPER_SIGMA_PX), border_value=1)
    return ndimage.gaussian_filter(inner.astype(np.float64), TAPER_SIGMA_PX) * mask


def radial_spectrum(images: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """Mean radially averaged power spectrum of standardised, Hann-windowed images (bins 1..size//2 cycles/image).

    With field masks each image is standardised over its field and tapered to zero at the field's edge (power
    divided by the taper's mean square, so a partial field is comparable with a full one).
    """
    n, h, w = images.shape
    masks = _masks(images, masks)
    hann = np.outer(np.hanning(h), np.hanning(w))
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    r = np.rint(np.hypot(fy, fx)).astype(int)
    nbins = min(h, w) // 2
    counts = np.bincount(r.ravel(), minlength=nbins + 1)[1 : nbins + 1]
    total = np.zeros(nbins)
    for img, mask in zip(images, masks):
        x = img.astype(np.float64)
        inside = x[mask] if mask.sum() >= 16 else x.ravel()
        x = (x - inside.mean()) / (inside.std() + 1e-12)
        taper = hann * field_taper(mask)
        power = np.abs(np.fft.fft2(x * taper)) ** 2 * (np.mean(hann**2) / max(float(np.mean(taper**2)), 1e-12))
        total += np.bincount(r.ravel(), weights=power.ravel(), minlength=nbins + 1)[1 : nbins + 1] / counts
    return total / max(n, 1)


def spectrum_distance(spec_a: np.ndarray, spec_b: np.ndarray) -> float:
    """RMS over frequency bins of log10(spec_a / spec_b) (0 for identical spectra)."""
    return float(np.sqrt(np.mean((np.log10(spec_a + 1e-30) - np.log10(spec_b + 1e-30)) ** 2)))


def fine_detail_energy(images: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """Per image: mean of (x - gaussian(x, FINE_SIGMA_PX))² inside the central region (and the field, if given)."""
    from scipy.ndimage import gaussian_filter

    _, h, w = images.shape
    masks = _masks(images, masks)
    t, s = int(round(BORDER * h)), int(round(BORDER * w))
    out = []
    for img, mask in zip(images, masks):
        x = img.astype(np.float64)
        fine = (x - gaussian_filter(x, FINE_SIGMA_PX, mode="reflect"))[t : h - t, s : w - s]
        keep = mask[t : h - t, s : w - s]
        out.append(float(np.mean(fine[keep] ** 2)) if keep.any() else float("nan"))
    return np.asarray(out)


def lung_field_values(images: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """Windowed intensities of the two fixed lung windows of every image (inside its field, if given), pooled."""
    _, h, w = images.shape
    masks = _masks(images, masks)
    r0, r1 = int(LUNG_ROWS[0] * h), int(LUNG_ROWS[1] * h)
    parts = []
    for c0, c1 in LUNG_COLS:
        cols = slice(int(c0 * w), int(c1 * w))
        parts.append(images[:, r0:r1, cols][masks[:, r0:r1, cols]])
    return np.concatenate(parts)


def lung_histogram(images: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """Normalised histogram (HIST_BINS bins on [0, 1]) of the lung-field intensities."""
    hist, _ = np.histogram(lung_field_values(images, masks), bins=HIST_BINS, range=(0.0, 1.0))
    return hist / max(hist.sum(), 1)


def histogram_distance(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
    """Earth mover's (Wasserstein-1) distance of two histograms on [0, 1], in intensity units."""
    return float(np.sum(np.abs(np.cumsum(hist_a) - np.cumsum(hist_b))) / len(hist_a))


def background_share(images: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """Per image: fraction of pixels (of its field, if given) below BACKGROUND_LEVEL of the window."""
    masks = _masks(images, masks)
    below = ((images < BACKGROUND_LEVEL) & masks).sum(axis=(1, 2))
    return (below / np.maximum(masks.sum(axis=(1, 2)), 1)).astype(np.float64)


def _small_masks(masks: np.ndarray, half: int) -> np.ndarray:
    """Field masks at the classifier scale (a pixel is in the field only if wholly inside it)."""
    return np.stack([resize_image(m.astype(np.float32), (half, half)) > 0.999 for m in masks])


def compare_sets(
    a: np.ndarray,
    b: np.ndarray,
    groups_a: Sequence[Hashable] | None,
    groups_b: Sequence[Hashable] | None,
    cfg: RealismConfig,
    masks_a: np.ndarray | None = None,
    masks_b: np.ndarray | None = None,
) -> dict[str, Any]:
    """All five figures of set A against set B (B is the reference), inside the fields when masks are given."""
    ma, mb = _masks(a, masks_a), _masks(b, masks_b)
    spec_a, spec_b = radial_spectrum(a, ma), radial_spectrum(b, mb)
    fine_a, fine_b = fine_detail_energy(a, ma), fine_detail_energy(b, mb)
    hist_a, hist_b = lung_histogram(a, ma), lung_histogram(b, mb)
    half = cfg.size // 2
    small_a = np.stack([resize_image(x, (half, half)) for x in a])
    small_b = np.stack([resize_image(x, (half, half)) for x in b])
    clf = classifier_two_sample_test(
        small_a, small_b, groups_a, groups_b, cfg.classifier, seed=cfg.seed,
        masks_a=_small_masks(ma, half), masks_b=_small_masks(mb, half),
    )  # fmt: skip
    return {
        "classifier_auc": clf["auc"],
        "classifier_auc_runs": [round(x, 4) for x in clf["auc_runs"]],
        "spectrum_distance": spectrum_distance(spec_a, spec_b),
        "fine_detail_ratio": float(np.nanmedian(fine_a) / max(float(np.nanmedian(fine_b)), 1e-30)),
        "lung_histogram_distance": histogram_distance(hist_a, hist_b),
        "background_share": float(background_share(a, ma).mean()),
        "background_share_reference": float(background_share(b, mb).mean()),
        "field_share": float(ma.mean()),
        "n": int(len(a)),
        "n_reference": int(len(b)),
        "_curves": {"spectrum": spec_a, "spectrum_reference": spec_b, "hist": hist_a, "hist_reference": hist_b},
    }


def _round(d: dict[str, Any]) -> dict[str, Any]:
    """Floats rounded to 4 decimals (stable JSON bytes), private keys dropped."""
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items() if not k.startswith("_")}


GENERATED_NAME = re.compile(r"^(?P<tag>.+)_(?P<ct>[0-9a-f]{12})_(?P<index>\d{4,})$")  # pipeline.sample: tag_ctid_index


def candidate_groups(paths: Sequence[Path], folder: Path) -> tuple[list[str], str]:
    """Group (source CT or patient) of every candidate image and how it was found.

    Images of one CT must stay on one side of the classifier's folds, or it can learn that CT's anatomy and
    recognise it: a patient table (images.csv/data.csv) in or above the folder, else the CT id in our generated
    file names (``<tag>_<ct id>_<index>``, resolving links), else one group per image. Fewer than two groups
    falls back to one per image (recorded in the report: the AUC then also rewards recognising the CT).
    """
    table = find_patient_table(folder)
    if table and all(p.stem in table for p in paths):
        groups, how = [table[p.stem] for p in paths], "table"
    else:
        matches = [GENERATED_NAME.match(Path(p).resolve().stem) for p in paths]
        if all(matches):
            groups, how = [m["ct"] for m in matches if m], "ct"
        else:
            groups, how = [p.stem for p in paths], "image"
    if len(set(groups)) < 2:
        groups, how = [p.stem for p in paths], "image"
    return groups, how


def evaluate_realism(
    candidates: str | Path, real: str | Path, cfg: RealismConfig | None = None, figure: str | Path | None = None
) -> dict[str, Any]:
    """The five realism figures of the CANDIDATES folder against the REAL folder, with a real-vs-real control.

    Real images of one patient stay on one side of every split (patients from images.csv/data.csv in or above
    REAL when present, else one per file). Returns a JSON-ready dict (no file names: they may identify patients).
    """
    cfg = cfg or RealismConfig()
    cand_paths = choose(list_images(candidates), cfg.max_images, cfg.seed)
    real_all = list_images(real)
    if cfg.real_part == "held-out":
        from restoration.splits import split_real

        real_all = split_real(real_all)[1]
    real_paths = choose(real_all, cfg.max_images, cfg.seed)
    for folder, paths in ((candidates, cand_paths), (real, real_paths)):
        if len(paths) < 4:
            raise ValueError(f"{folder}: needs at least 4 png/jpg/jpeg/dcm images, found {len(paths)}")
    table = find_patient_table(Path(real))
    patient = lambda p: table.get(p.stem, p.stem)  # noqa: E731
    if len({patient(p) for p in real_paths}) < 4:
        raise ValueError(f"{real}: needs images of at least 4 patients for the real-vs-real control")
    cand, cand_masks = load_set(cand_paths, cfg.size, cfg.field)
    ref, ref_masks = load_set(real_paths, cfg.size, cfg.field)
    real_groups = [patient(p) for p in real_paths]
    cand_groups, grouping = candidate_groups(cand_paths, Path(candidates))
    main = compare_sets(cand, ref, cand_groups, real_groups, cfg, cand_masks, ref_masks)
    half_a, half_b = split_by_source(real_paths, 0.5, seed=cfg.seed, group_of=patient)
    ia = [real_paths.index(p) for p in half_a]
    ib = [real_paths.index(p) for p in half_b]
    control = compare_sets(
        ref[ia], ref[ib], [real_groups[i] for i in ia], [real_groups[i] for i in ib], cfg, ref_masks[ia], ref_masks[ib]
    )
    report = {
        "candidates_vs_real": _round(main),
        "real_vs_real": _round(control),
        "n_candidates": len(cand_paths),
        "n_real": len(real_paths),
        "n_real_patients": len(set(real_groups)),
        "candidate_groups": {"by": grouping, "n": len(set(cand_groups))},
        "settings": cfg.to_dict(),
        "definitions": {
            "background_level": BACKGROUND_LEVEL,
            "fine_sigma_px": FINE_SIGMA_PX,
            "border": BORDER,
            "lung_rows": list(LUNG_ROWS),
            "lung_cols": [list(c) for c in LUNG_COLS],
            "window_percentiles": [0.1, 99.5],
            "field_margin": FIELD_MARGIN,
            "taper_sigma_px": TAPER_SIGMA_PX,
        },
    }
    if figure is not None:
        from restoration.realism_figure import realism_figure

        realism_figure(figure, cand, ref, main["_curves"], control["_curves"], report)
    return report
