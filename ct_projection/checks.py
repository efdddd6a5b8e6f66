"""Plausibility checks that a loaded volume is a usable chest CT in HU (each failure is a one-line CTInputError)."""

from __future__ import annotations

import numpy as np

from ct_projection.lungs import ChestMasks, chest_masks
from ct_projection.volume import CTInputError, CTVolume

MIN_SLICES = 8
SPACING_RANGE_MM = (0.1, 15.0)
AIR_RANGE_HU = (-1200.0, -800.0)  # CT air is ≈ −1000 HU; lungs alone (tight field of view) are ≈ −850
MAX_SAMPLES = 2_000_000  # statistics on a strided subsample keep the check fast on 512³ volumes


def check_plausible_chest_ct(vol: CTVolume) -> ChestMasks:
    """Raise CTInputError unless ``vol`` looks like a chest CT in HU (finite, enough slices, CT air, lungs).

    Returns the body and lung masks the check found, so the caller need not segment the CT again.
    """
    src = vol.source or "<array>"
    hu = vol.hu
    bad = int(hu.size - np.count_nonzero(np.isfinite(hu)))
    if bad:
        raise CTInputError(src, f"{bad} voxels are NaN or Inf; the volume is corrupt")

    slices = vol.shape[2]
    if slices < MIN_SLICES:
        raise CTInputError(src, f"too few slices: {slices} along the head–foot axis (need ≥ {MIN_SLICES})")
    spacing = vol.spacing
    if spacing.min() < SPACING_RANGE_MM[0] or spacing.max() > SPACING_RANGE_MM[1]:
        shown = " × ".join(f"{s:.3g}" for s in spacing)
        raise CTInputError(
            src,
            f"voxel spacing {shown} mm is implausible for a CT "
            f"(expected {SPACING_RANGE_MM[0]}–{SPACING_RANGE_MM[1]} mm)",
        )

    stride = max(1, int(np.ceil((hu.size / MAX_SAMPLES) ** (1 / 3))))
    sample = hu[::stride, ::stride, ::stride].ravel()
    air, p99 = (float(v) for v in np.percentile(sample, [1, 99]))
    if sample.min() >= 0 and p99 > 200:
        raise CTInputError(
            src,
            f"intensities {sample.min():.0f}..{p99:.0f} with no negative values and no air (CT air is ≈ −1000 HU); "
            "this looks like MR or unscaled stored values, not CT in HU",
        )
    if not AIR_RANGE_HU[0] <= air <= AIR_RANGE_HU[1]:
        raise CTInputError(
            src,
            f"measured air level {air:.0f} HU (1st percentile) is not CT air (≈ −1000 HU, expected "
            f"{AIR_RANGE_HU[0]:.0f}…{AIR_RANGE_HU[1]:.0f}); is this HU-scaled CT?",
        )
    return chest_masks(vol)
