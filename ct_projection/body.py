"""Patient body mask: removes the CT table, the reconstruction-circle padding and noisy outside air before projection.

A standing PA radiograph has no CT table in it, and the −950…−1000 HU noise of the air around the patient would add
a spurious line integral. Keeping only the body (and cropping the grid to it) makes the DRR cleaner and faster.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def body_mask(
    hu: np.ndarray, spacing: tuple[float, float, float] | np.ndarray = (1.0, 1.0, 1.0), threshold_hu: float = -500.0
) -> np.ndarray:
    """Largest connected component above ``threshold_hu``, holes (lungs, airways) filled slice by slice.

    Args:
        hu: (I, J, K) CT in HU with k the superior–inferior axis (RAS+ canonical).
        spacing: voxel size (mm) along each axis; the table-separating opening is sized in mm, not voxels.
        threshold_hu: soft tissue / air boundary.
    """
    fg = hu > threshold_hu
    # Open lightly (~1.5 mm radius in-plane) so the table, touching the back only through a thin pad or blanket,
    # separates from the body; never more than the chest wall could lose.
    iterations = int(np.clip(round(1.5 / float(min(spacing[0], spacing[1]))), 1, 3))
    fg = ndimage.binary_opening(fg, structure=np.ones((3, 3, 1), bool), iterations=iterations)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros_like(fg)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    # Fill per axial slice: the lungs are holes in 2D but open to the airway (and thus the outside) in 3D.
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return ndimage.binary_dilation(body, structure=np.ones((3, 3, 1), bool))


def bounding_slices(mask: np.ndarray, margin: int = 1) -> tuple[slice, slice, slice]:
    """Index slices of the mask's bounding box, grown by ``margin`` voxels and clipped to the grid."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return tuple(slice(0, s) for s in mask.shape)  # type: ignore[return-value]
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]
