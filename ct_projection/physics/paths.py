"""What the renderer integrates for the ``full`` physics: per-material densities of the CT and of a nodule's change.

Renderers trace a stack of ``C`` volumes in one pass (``ct_projection.renderer``); for the water/bone basis the stack
is the two partial densities, scaled by 0.1 so that a line integral over millimetres comes out in g/cm² (the unit of
the mass attenuation coefficients). A nodule changes HU by ΔHU on a sub-box; its material change is
``decompose(hu + ΔHU) − decompose(hu)`` on that sub-box — exact even where the basis is piecewise (a calcified nodule
crossing 0 HU) — and, traced over the nodule's detector window, adds to the CT's material paths there.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ct_projection.physics.materials import MaterialBasis

MM_TO_CM = 0.1  # ∫ρ ds with ds in mm → g/cm² when ρ is in g/cm³


def material_densities(basis: MaterialBasis) -> Callable[[np.ndarray], np.ndarray]:
    """HU array → (2, ...) float32 volumes whose line integrals (mm) are the material paths in g/cm²."""

    def densities(hu: np.ndarray) -> np.ndarray:
        return (basis.decompose(hu) * np.float32(MM_TO_CM)).astype(np.float32)

    return densities


def nodule_density_change(basis: MaterialBasis, hu: np.ndarray, delta_hu: np.ndarray, offset_ijk: np.ndarray) -> np.ndarray:
    """(2, a, b, c) change of the scaled material densities caused by ``delta_hu`` on the sub-box at ``offset_ijk``.

    Args:
        basis: the material basis of the full render.
        hu: the CT's HU (whole grid) without this nodule.
        delta_hu: (a, b, c) HU change (new − old).
        offset_ijk: the sub-box's first voxel in the CT grid.
    """
    i, j, k = (int(v) for v in offset_ijk)
    a, b, c = delta_hu.shape
    before = np.asarray(hu[i : i + a, j : j + b, k : k + c], dtype=np.float32)
    if before.shape != delta_hu.shape:
        raise ValueError(f"nodule sub-box {delta_hu.shape} at {tuple(offset_ijk)} leaves the CT grid {hu.shape}")
    after = before + np.asarray(delta_hu, dtype=np.float32)
    change = basis.decompose(after) - basis.decompose(before)
    change[:, delta_hu == 0] = 0.0  # untouched voxels contribute exactly nothing (no float round-off)
    return (change * np.float32(MM_TO_CM)).astype(np.float32)
