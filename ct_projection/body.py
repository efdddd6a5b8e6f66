"""Patient body mask, computed once per CT on a coarse grid and shared by the lung segmentation and the renderer.

A standing PA radiograph has no CT table in it, and the −950…−1000 HU noise of the air around the patient would add
a spurious line integral. Keeping only the body (and cropping the grid to it) makes the DRR cleaner and faster.

Exactness at the skin is not needed by either user: the lung segmentation works on the same ~2 mm block-averaged grid,
and the renderer only zeroes what lies outside a one-block dilation of the body (air, the table). So the mask is
computed once on that coarse grid (≈ 8x fewer voxels than a 0.7 mm CT) with SimpleITK morphology.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

BODY_HU = -500.0  # soft tissue / air boundary
BODY_OPENING_MM = 1.5  # detaches the CT table, which touches the back only through thin pads
WORKING_MM = 2.0  # voxel size (at most) of the coarse grid the body and the lungs are segmented on

# In-plane 4-connectivity inside a 3D array: one labelling fills the holes of every slice.
_INPLANE = np.zeros((3, 3, 3), dtype=bool)
_INPLANE[:, :, 1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class BodyMask:
    """The body (in-plane holes such as the lungs filled) on a block grid of the CT.

    Attributes:
        coarse: bool mask on the block grid (block ``(a, b, c)`` averages CT voxels ``[a*f0:(a+1)*f0, ...]``).
        factor: block size in CT voxels per axis.
        shape: the CT grid's shape.
        coarse_hu: the block-averaged HU the mask was computed from (the lung segmentation works on it too).
    """

    coarse: np.ndarray
    factor: tuple[int, int, int]
    shape: tuple[int, int, int]
    coarse_hu: np.ndarray

    def full(self, dilate_blocks: int = 1) -> np.ndarray:
        """Bool mask on the CT grid, grown in-plane by ``dilate_blocks`` blocks so the skin is surely inside."""
        low = self.coarse
        if dilate_blocks > 0 and low.any():
            low = ndimage.binary_dilation(low, structure=_INPLANE, iterations=dilate_blocks)
        up = low
        for axis, f in enumerate(self.factor):
            if f > 1:
                up = up.repeat(f, axis=axis)
        # Trailing voxels that did not fill a whole block take the last block's value.
        pad = [(0, s - u) for s, u in zip(self.shape, up.shape)]
        return np.pad(up, pad, mode="edge") if any(p[1] for p in pad) else up

    def bounding_slices(self, dilate_blocks: int = 1) -> tuple[slice, slice, slice]:
        """CT-grid index slices of the (dilated) body's bounding box, on all three axes."""
        return bounding_slices(self.full(dilate_blocks))


def block_factor(spacing: tuple[float, float, float] | np.ndarray, working_mm: float = WORKING_MM) -> tuple[int, ...]:
    """Voxels per block along each axis so a block is at most ``working_mm`` (never below one voxel)."""
    return tuple(max(1, int(working_mm // float(s))) for s in spacing)


def block_mean(hu: np.ndarray, factor: tuple[int, ...]) -> np.ndarray:
    """Mean over non-overlapping blocks (trailing partial blocks dropped), float32."""
    if all(f == 1 for f in factor):
        return np.asarray(hu, dtype=np.float32)
    n = [s // f for s, f in zip(hu.shape, factor)]
    cropped = hu[: n[0] * factor[0], : n[1] * factor[1], : n[2] * factor[2]]
    return cropped.reshape(n[0], factor[0], n[1], factor[1], n[2], factor[2]).mean(axis=(1, 3, 5), dtype=np.float32)


def body_mask(
    hu: np.ndarray,
    spacing: tuple[float, float, float] | np.ndarray = (1.0, 1.0, 1.0),
    working_mm: float = WORKING_MM,
) -> BodyMask:
    """Largest connected component above −500 HU after an in-plane opening (which detaches the table), then
    regrown by the opening radius within the tissue, holes filled slice by slice.

    Args:
        hu: (I, J, K) CT in HU with k the superior–inferior axis (RAS+ canonical).
        spacing: voxel size (mm) along each axis; the table-separating opening is sized in mm, not voxels.
        working_mm: block size the mask is computed at.
    """
    factor = block_factor(spacing, working_mm)
    low = block_mean(hu, factor)
    low_spacing = np.asarray(spacing, dtype=np.float64) * factor
    shape = tuple(int(s) for s in hu.shape)
    return BodyMask(inside_body(low, low_spacing), factor, shape, low)  # type: ignore[arg-type]


def inside_body(hu: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The body with its in-plane holes (lungs, airways) filled, on the grid ``hu`` is given on."""
    fg = hu > BODY_HU
    radius = int(round(BODY_OPENING_MM / float(min(spacing[:2]))))
    opened = _open_inplane_box(fg, radius) if radius else fg
    ranked = sitk.RelabelComponent(sitk.ConnectedComponent(to_sitk(opened), False))
    body = from_sitk(sitk.BinaryThreshold(ranked, 1, 1, 1, 0))
    if radius:
        # Give back what the opening shaved off the body itself (thin chest wall, skin) but nothing farther away,
        # so a table that only touched through thin pads stays detached.
        body = _dilate_inplane_box(body, radius) & fg
    return fill_holes_inplane(body)


def _open_inplane_box(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary opening with a (2r+1)² in-plane box, outside = background; separable min/max filters.

    Identical to SimpleITK's ``BinaryMorphologicalOpening`` with a box kernel, ~9x faster (1D passes).
    """
    out = mask.view(np.uint8)
    for axis in (0, 1):
        out = ndimage.minimum_filter1d(out, 2 * radius + 1, axis=axis, mode="constant", cval=0)
    return _dilate_inplane_box(out.view(bool), radius)


def _dilate_inplane_box(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)² in-plane box (separable max filters)."""
    out = mask.view(np.uint8)
    for axis in (0, 1):
        out = ndimage.maximum_filter1d(out, 2 * radius + 1, axis=axis, mode="constant", cval=0)
    return out.view(bool)


def to_sitk(mask: np.ndarray) -> sitk.Image:
    """(i, j, k) bool array → uint8 SimpleITK image with x = i, y = j, z = k (unit spacing: radii are in voxels)."""
    return sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0), dtype=np.uint8))


def from_sitk(img: sitk.Image) -> np.ndarray:
    """Inverse of ``to_sitk``."""
    return sitk.GetArrayViewFromImage(img).transpose(2, 1, 0).astype(bool)


def fill_holes_inplane(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice: background not 4-connected in-plane to the slice border is a hole.

    SimpleITK's BinaryFillhole is N-dimensional (a hole open in z is not filled), and looping it over 2D slices is
    ~10x slower than one 3D labelling with an in-plane structuring element, which fills every slice at once.
    """
    background = ~mask
    labels, _ = ndimage.label(background, structure=_INPLANE)
    edges = (labels[0], labels[-1], labels[:, 0], labels[:, -1])
    border = np.unique(np.concatenate([e.ravel() for e in edges]))
    return mask | (background & ~np.isin(labels, border))


def bounding_slices(mask: np.ndarray, margin: int = 1) -> tuple[slice, slice, slice]:
    """Index slices of the mask's bounding box, grown by ``margin`` voxels and clipped to the grid."""
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if idx[0].size == 0:
        return tuple(slice(0, s) for s in mask.shape)  # type: ignore[return-value]
    lo = [max(int(i[0]) - margin, 0) for i in idx]
    hi = [min(int(i[-1]) + 1 + margin, s) for i, s in zip(idx, mask.shape)]
    return tuple(slice(a, b) for a, b in zip(lo, hi))  # type: ignore[return-value]
