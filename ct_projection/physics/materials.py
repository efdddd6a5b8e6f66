"""CT numbers → a two-material (water/bone) basis, and NIST mass attenuation of the basis materials (xraydb).

A CT voxel's HU was measured at the CT scanner's effective energy (~70 keV for a 120 kVp CT). We split each voxel
into partial densities of water and ICRU-44 cortical bone (a standard two-material basis, cf. Alvarez & Macovski 1976;
DeepDRR uses thresholds instead, which step at the boundaries):

* HU ≤ 0: water (lung, fat, air) at density ``1 + HU/1000`` g/cm³ (0 at −1000 HU);
* 0 < HU ≤ HU_bone: a volume mix, bone fraction ``f = HU / HU_bone`` (water ``1 − f``, bone ``1.92·f`` g/cm³), where
  ``HU_bone = 1000·(μ_bone(E_ct)/μ_water(E_ct) − 1)`` is the CT number of cortical bone at the CT's effective energy;
* HU > HU_bone: cortical bone, density scaled by ``(1 + HU/1000)/(1 + HU_bone/1000)``.

So soft tissue is almost water, trabecular/cortical bone gets its photoelectric (Ca, P) energy dependence, and a
nodule's change of the basis densities is ``decompose(hu + ΔHU) − decompose(hu)`` exactly. Mass attenuation
coefficients (total, with coherent scattering) are xraydb's Elam tables, which agree with NIST XCOM to ~1%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

WATER_FORMULA = "H2O"
# ICRU Report 44 cortical bone (NIST "Bone, Cortical (ICRU-44)"): mass fractions and density.
CORTICAL_BONE_ICRU44 = {
    "H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103, "S": 0.003, "Ca": 0.225,
}  # fmt: skip
CORTICAL_BONE_DENSITY = 1.92  # g/cm³
MATERIALS = ("water", "bone")


def mass_attenuation(material: str, energies_kev: np.ndarray | float) -> np.ndarray:
    """Total mass attenuation coefficient μ/ρ (cm²/g) of ``water`` or ``bone`` (ICRU-44 cortical) at energies (keV)."""
    energies = np.atleast_1d(np.asarray(energies_kev, dtype=np.float64))
    return np.array([_mass_attenuation_cached(material, float(e)) for e in energies])


@lru_cache(maxsize=4096)
def _mass_attenuation_cached(material: str, kev: float) -> float:
    """One xraydb lookup (they are slowish; the same few energies recur)."""
    import xraydb

    ev = kev * 1000.0
    if material == "water":
        return float(xraydb.material_mu(WATER_FORMULA, ev, density=1.0))  # 1/cm at 1 g/cm³ = cm²/g
    if material == "bone":
        return float(sum(w * xraydb.mu_elam(el, ev) for el, w in CORTICAL_BONE_ICRU44.items()))
    raise ValueError(f"unknown material {material!r}: expected one of {', '.join(MATERIALS)}")


@dataclass(frozen=True)
class MaterialBasis:
    """HU → (water, bone) partial densities in g/cm³.

    Args:
        ct_effective_kev: effective energy at which the CT's HU were measured (sets the bone HU).
    """

    ct_effective_kev: float = 70.0

    @property
    def bone_hu(self) -> float:
        """CT number of ICRU-44 cortical bone at the CT's effective energy."""
        mu_w = mass_attenuation("water", self.ct_effective_kev)[0]
        mu_b = mass_attenuation("bone", self.ct_effective_kev)[0] * CORTICAL_BONE_DENSITY
        return float(1000.0 * (mu_b / mu_w - 1.0))

    def decompose(self, hu: np.ndarray) -> np.ndarray:
        """(2, *hu.shape) float32 partial densities (water, bone) in g/cm³."""
        hu = np.asarray(hu, dtype=np.float32)
        hu_b = np.float32(self.bone_hu)
        frac = np.clip(hu / hu_b, 0.0, 1.0)
        water = np.where(hu <= 0, np.clip(1.0 + hu / 1000.0, 0.0, None), 1.0 - frac)
        over = np.clip((1.0 + hu / 1000.0) / (1.0 + hu_b / 1000.0), 1.0, None)  # denser than cortical bone
        bone = CORTICAL_BONE_DENSITY * frac * over
        return np.stack([water, bone]).astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        """JSON-able form."""
        return asdict(self)
