"""Indirect flat-panel detector: CsI scintillator efficiency, quantum + electronic noise, and blur (MTF).

* Efficiency ``η(E) = 1 − exp(−(μ/ρ)_CsI(E)·m)`` with ``m`` the scintillator's mass thickness (a 600 µm columnar CsI
  layer at ~75% packing is ~200 mg/cm²; xraydb total attenuation of CsI).
* Quantum noise: the signal of an energy-integrating pixel is compound Poisson — N ~ Poisson(n̄) photons, each
  depositing its energy E — so ``Var = n̄·E[E²]`` (a Poisson variance in quanta, scaled by the Swank-like factor
  ``E[E²]/E[E]``). We use its normal approximation ``D + √Var·z`` with one standard-normal field ``z`` per sample:
  the nodule-free twin reuses the same ``z``, so image − twin is the nodule's signal plus the noise's signal
  dependence ``(√Var₁ − √Var₀)·z`` (≈ ½·ΔL·σ_L relative, i.e. a few % of the noise, only inside the nodule's
  shadow). The approximation is accurate above ~20 quanta per pixel, far below chest PA exposures at our pixel sizes.
* Scintillator light spread and the pixel aperture blur signal and quantum noise alike (Gaussian MTF:
  ``σ_det`` gives MTF(1 lp/mm) ≈ 0.6, typical of CsI panels; rays are point samples, so the pixel aperture is added
  as a box of one pitch, variance p²/12); electronic noise (white, in quanta of the open-field mean energy) is added
  after the blur, at read-out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class DetectorConfig:
    """Detector settings.

    Args:
        scintillator_mg_per_cm2: CsI mass thickness.
        mtf_sigma_mm: Gaussian blur of the scintillator (0.16 mm → MTF 0.6 at 1 lp/mm).
        pixel_aperture: add the pixel's box aperture (σ = pitch/√12) to the blur.
        electronic_noise_quanta: read-out noise σ in open-field-mean-energy quanta per pixel.
        quantum_noise: add quantum noise (off: the noise-free expected image).
    """

    scintillator_mg_per_cm2: float = 200.0
    mtf_sigma_mm: float = 0.16
    pixel_aperture: bool = True
    electronic_noise_quanta: float = 10.0
    quantum_noise: bool = True

    def __post_init__(self) -> None:
        if self.scintillator_mg_per_cm2 <= 0:
            raise ValueError(f"scintillator_mg_per_cm2 must be > 0, got {self.scintillator_mg_per_cm2:g}")
        if self.mtf_sigma_mm < 0 or self.electronic_noise_quanta < 0:
            raise ValueError("mtf_sigma_mm and electronic_noise_quanta must be >= 0")

    def blur_sigma_px(self, pixel_mm: float) -> float:
        """Total Gaussian blur σ in pixels (scintillator ⊕ pixel aperture)."""
        var = self.mtf_sigma_mm**2 + (pixel_mm**2 / 12.0 if self.pixel_aperture else 0.0)
        return float(np.sqrt(var) / pixel_mm)

    def to_dict(self) -> dict[str, float | bool]:
        """JSON-able form."""
        return asdict(self)


def detector_efficiency(energies_kev: np.ndarray, config: DetectorConfig) -> np.ndarray:
    """Fraction of photons of each energy (keV) that interact in the scintillator."""
    mu = np.array([_csi_mu_rho(float(e)) for e in np.atleast_1d(energies_kev)])
    return 1.0 - np.exp(-mu * config.scintillator_mg_per_cm2 / 1000.0)


@lru_cache(maxsize=1024)
def _csi_mu_rho(kev: float) -> float:
    """CsI total mass attenuation (cm²/g), xraydb."""
    import xraydb

    return float(xraydb.material_mu("CsI", kev * 1000.0, density=1.0))


def quantum_noise(signal: np.ndarray, variance: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signal plus compound-Poisson noise in its normal approximation, ``signal + √variance·z`` (float32, ≥ 0)."""
    noisy = signal + np.sqrt(np.maximum(variance, 0.0)) * z
    return np.maximum(noisy, 0.0).astype(np.float32)


def blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Detector blur (Gaussian MTF); edges reflect (the panel continues beyond the traced field)."""
    if sigma_px <= 0:
        return image.astype(np.float32)
    return ndimage.gaussian_filter(image.astype(np.float32), sigma=sigma_px, mode="reflect", truncate=4.0)


def mtf(frequency_lp_mm: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Modulation transfer function of a Gaussian blur σ (mm) at spatial frequencies (line pairs per mm)."""
    f = np.asarray(frequency_lp_mm, dtype=np.float64)
    return np.exp(-2.0 * (np.pi * sigma_mm * f) ** 2)
