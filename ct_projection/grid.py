"""Voxel grids read from files: refuse affines that cannot place voxels, resample sheared ones onto orthogonal axes.

Everything downstream (body crop, lung mask, nodule shapes, labels, both renderers) treats a voxel as a box with
orthogonal edges of length ``spacing``. A sheared affine (NIfTI sform, NRRD space directions, MetaImage
TransformMatrix with non-perpendicular columns) breaks that, so it is resampled here, exactly like a tilted DICOM
series: onto a world-axis-aligned grid with the same voxel sizes, trilinear for HU and nearest for labels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from ct_projection.volume import CTInputError, check_size

MIN_SPACING_MM = 1e-6  # below this an axis has no extent: the grid is degenerate
MIN_DIRECTION_DET = 1e-3  # unit axis directions this close to coplanar cannot span a volume
SHEAR_VOXELS = 0.1  # shear moving some voxel by more than this fraction of a voxel is resampled, not ignored


def _shown(values: np.ndarray) -> str:
    return " × ".join(f"{v:.4g}" for v in values)


def check_affine(path: str | Path, affine: np.ndarray, what: str = "affine") -> None:
    """Refuse an affine that cannot place voxels in the world: NaN/Inf entries, a zero axis, parallel axes.

    Args:
        path: the file, for the message.
        affine: 4x4 voxel → world mm.
        what: which header field the affine came from, for the message (e.g. "NIfTI sform").
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine[:3]).all():
        bad = "origin" if np.isfinite(affine[:3, :3]).all() else "voxel axes"
        raise CTInputError(path, f"{what} holds NaN or Inf in its {bad}: the voxel positions are undefined")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if (spacing < MIN_SPACING_MM).any():
        raise CTInputError(path, f"{what} has a zero-length voxel axis (spacing {_shown(spacing)} mm): degenerate grid")
    det = float(np.linalg.det(affine[:3, :3] / spacing))
    if abs(det) < MIN_DIRECTION_DET:
        raise CTInputError(
            path, f"{what} has (nearly) parallel voxel axes (direction determinant {det:.2g}): degenerate grid"
        )


def shear_mm(affine: np.ndarray, shape: tuple[int, ...]) -> float:
    """How far (mm) some voxel would move if the grid were treated as orthogonal (0 for an orthogonal affine).

    "Treated as orthogonal" keeps each axis' length and takes the nearest orthonormal directions (polar
    decomposition), which is all the rest of the code can represent.
    """
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    units = a / spacing
    u, _, vt = np.linalg.svd(units)
    nearest = u @ vt
    corners = np.array(np.meshgrid(*[[0, max(int(s) - 1, 0)] for s in shape[:3]], indexing="ij")).reshape(3, -1)
    return float(np.linalg.norm((units - nearest) @ (corners * spacing[:, None]), axis=0).max())


def is_sheared(affine: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether shear misplaces some voxel by more than ``SHEAR_VOXELS`` of the smallest voxel size."""
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return shear_mm(affine, shape) > SHEAR_VOXELS * float(spacing.min())


def deshear(
    path: str | Path, data: np.ndarray, affine: np.ndarray, *, order: int, fill: float
) -> tuple[np.ndarray, np.ndarray, str]:
    """Resample a sheared grid onto a world-axis-aligned grid with the same voxel sizes.

    Each source axis goes to its nearest world axis (sign kept); the target grid covers every source voxel centre.
    Points outside the source grid get ``fill``.

    Args:
        path: the file, for messages.
        data: (I, J, K) array on the sheared grid.
        affine: its 4x4 voxel → world mm affine.
        order: 1 (trilinear, HU) or 0 (nearest, label maps).
        fill: value outside the source grid (air for HU, background for labels).

    Returns:
        (resampled array, its affine, a note for ``info['corrections']``).
    """
    a = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    axes = np.zeros((3, 3))
    for j in range(3):
        world = int(np.argmax(np.abs(a[:3, j])))
        axes[world, j] = math.copysign(1.0, a[world, j])
    if abs(np.linalg.det(axes)) < 0.5:
        raise CTInputError(path, "cannot resample the sheared grid: two voxel axes point along the same world axis")
    corners = np.array(np.meshgrid(*[[0, int(s) - 1] for s in data.shape], indexing="ij")).reshape(3, -1)
    coords = axes.T @ (a[:3, :3] @ corners + a[:3, 3:4])  # corner positions along the target axes
    lo, hi = coords.min(1), coords.max(1)
    shape = tuple(int(math.floor((hi[k] - lo[k]) / spacing[k] + 1e-6)) + 1 for k in range(3))
    check_size(path, shape, "resampled grid")
    target = np.eye(4)
    target[:3, :3] = axes * spacing
    target[:3, 3] = axes @ lo
    to_source = np.linalg.inv(a) @ target  # target voxel → source voxel
    source = data.astype(np.float32, copy=False) if order else data
    out = ndimage.affine_transform(
        source, to_source[:3, :3], to_source[:3, 3], output_shape=shape, order=order, mode="constant", cval=fill
    )
    note = f"resampled: sheared grid (up to {shear_mm(a, data.shape):.1f} mm off orthogonal) onto world axes"
    return out, target, note
