"""X-ray tube spectrum (spekpy) binned into a few energy bins for fast polychromatic projection.

Chest PA defaults follow common DR practice: 120 kVp, tungsten anode at 12°, 2.5 mm Al total inherent filtration
(the IEC 60601-1-3 minimum above 70 kVp) plus 0.1 mm Cu added filtration (European guidelines on quality criteria
for diagnostic radiographic images, EUR 16260: chest PA at ~125 kVp; Cu added filtration of 0.1–0.2 mm is the usual
DR setting). spekpy (Poludniowski et al., Med Phys 2021) returns photons per keV per cm² per mAs at 1 m.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class SpectrumConfig:
    """Tube settings.

    Args:
        kvp: tube voltage (kV).
        anode_angle_deg: tungsten anode angle.
        al_mm: total aluminium filtration (inherent + added), mm.
        cu_mm: added copper filtration, mm.
        mas: tube current-time product (mAs); sets the photon fluence and thus the quantum noise.
        n_bins: energy bins used for projection (each costs one exp per pixel).
    """

    kvp: float = 120.0
    anode_angle_deg: float = 12.0
    al_mm: float = 2.5
    cu_mm: float = 0.1
    mas: float = 2.0
    n_bins: int = 8

    def __post_init__(self) -> None:
        if not 30.0 <= self.kvp <= 150.0:
            raise ValueError(f"kvp must be within 30..150 kV (spekpy's range), got {self.kvp:g}")
        if self.al_mm < 0 or self.cu_mm < 0:
            raise ValueError(f"filtration must be >= 0 mm, got al_mm={self.al_mm:g}, cu_mm={self.cu_mm:g}")
        if self.mas <= 0:
            raise ValueError(f"mas must be > 0, got {self.mas:g}")
        if not 1 <= self.n_bins <= 64:
            raise ValueError(f"n_bins must be within 1..64, got {self.n_bins}")

    def to_dict(self) -> dict[str, float]:
        """JSON-able form."""
        return asdict(self)


def tube_spectrum(config: SpectrumConfig) -> tuple[np.ndarray, np.ndarray]:
    """Energies (keV, 1 keV steps) and photon fluence (photons / (keV·mm²) per mAs at 1 m) of the filtered beam."""
    energies, fluence = _spectrum_cached(config.kvp, config.anode_angle_deg, config.al_mm, config.cu_mm)
    return energies.copy(), fluence.copy()


@lru_cache(maxsize=16)
def _spectrum_cached(kvp: float, angle: float, al_mm: float, cu_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """spekpy is slow to set up (~0.5 s), so each tube setting is computed once per process."""
    import spekpy

    spek = spekpy.Spek(kvp=kvp, th=angle, dk=1.0)
    if al_mm > 0:
        spek.filter("Al", al_mm)
    if cu_mm > 0:
        spek.filter("Cu", cu_mm)
    energies, fluence = spek.get_spectrum()  # photons / keV / cm² / mAs at 1 m
    keep = fluence > 0
    return np.asarray(energies[keep], np.float64), np.asarray(fluence[keep], np.float64) / 100.0  # → per mm²


def bin_edges(energies: np.ndarray, weight: np.ndarray, n_bins: int) -> np.ndarray:
    """Indices splitting ``energies`` into ``n_bins`` contiguous bins of about equal ``weight`` (quantile bins)."""
    cum = np.cumsum(weight) / weight.sum()
    cuts = np.searchsorted(cum, np.arange(1, n_bins) / n_bins)
    edges = np.unique(np.concatenate([[0], cuts, [len(energies)]]))
    return edges.astype(int)
