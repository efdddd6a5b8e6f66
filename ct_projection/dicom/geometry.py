"""Slice stack → regular grid: ordering, duplicates, missing slices, and resampling of uneven or tilted series.

Geometry decisions (all exercised by ``tests/test_ingest_dicom.py``):

* Slices are ordered by their distance along the slice normal ``n = row × col`` (from ImageOrientationPatient),
  never by file name or InstanceNumber.
* Duplicated positions: exact pixel duplicates are dropped (noted in ``info``); different pixels at the same
  position mean two scans are mixed, which is refused.
* Missing slices: a gap ≥ 1.5× the usual spacing is refused (interpolating across it would invent anatomy). The
  usual spacing is the median gap within each run of slices of equal SliceThickness, so a series made of two
  contiguous blocks (e.g. 4 mm then 7 mm slices, like the GE tilt case) is *uneven*, not *missing*.
* Uneven spacing (gaps differ by > 1 %) and gantry tilt (slice origins not stacked along the normal, so the grid
  is sheared; SimpleITK silently reads such a series as an oblique volume with an averaged spacing) are
  **resampled**, not refused: the per-slice geometry (IPP, IOP, PixelSpacing) fully determines where every pixel
  lies, so the exact inverse mapping exists and a refusal would throw away usable, real chest CTs (tilted
  acquisitions are common on older scanners). For every target voxel the resampler finds its distance along the
  normal, the two slices around it, and the exact in-plane position of the point *in each of those two slices*
  (relative to that slice's own IPP), samples both bilinearly and blends them linearly along the normal. Sheared
  series go onto a world-axis-aligned grid; unsheared uneven series keep their in-plane grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from ct_projection.dicom.headers import SliceHeader, float_or_none
from ct_projection.volume import CTInputError, check_size

AIR_HU = -1024.0
GAP_FACTOR = 1.5  # a gap this many times the usual spacing is a missing slice
UNEVEN_TOLERANCE = 0.01  # relative spread of slice gaps above which the series is resampled
DUPLICATE_MM = 0.01  # slices closer than this along the normal share a position


def _blocks_expected_gap(gaps: np.ndarray, thickness: list[float | None]) -> np.ndarray:
    """Usual spacing for each gap: median gap inside its run of equal SliceThickness (max of the two runs)."""
    key = [round(t, 2) if t is not None else None for t in thickness]
    block = np.cumsum([0] + [int(key[i] != key[i - 1]) for i in range(1, len(key))])
    inner = block[:-1] == block[1:]
    overall = float(np.median(gaps))
    medians = {}
    for b in np.unique(block):
        in_block = gaps[inner & (block[:-1] == b)]
        medians[int(b)] = float(np.median(in_block)) if in_block.size else overall
    return np.array([max(medians[int(block[i])], medians[int(block[i + 1])]) for i in range(len(gaps))])


def assemble(
    source: Path, slices: list[SliceHeader], stack: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str], list[SliceHeader]]:
    """Order, de-duplicate, validate and (if needed) resample a stack into a regular grid.

    Returns:
        (array (A, B, C), voxel → LPS affine, corrections made, slices kept).
    """
    n = slices[0].normal
    row, col = slices[0].row / np.linalg.norm(slices[0].row), slices[0].col / np.linalg.norm(slices[0].col)
    d = np.array([float(s.ipp @ n) for s in slices])
    order = np.argsort(d, kind="stable")
    slices = [slices[i] for i in order]
    stack = stack[order]
    d = d[order]
    notes: list[str] = []

    # Duplicated positions: identical pixels → drop; different pixels → two scans are mixed.
    keep = [0]
    for k in range(1, len(slices)):
        if d[k] - d[keep[-1]] < DUPLICATE_MM:
            if not np.array_equal(stack[k], stack[keep[-1]]):
                raise CTInputError(
                    source,
                    f"two different images at the same slice position {d[k]:.2f} mm "
                    f"({slices[keep[-1]].path.name}, {slices[k].path.name}); the folder mixes scans — "
                    "pass series_uid or separate them",
                )
            continue
        keep.append(k)
    if len(keep) < len(slices):
        notes.append(f"dropped {len(slices) - len(keep)} duplicate slice(s)")
        slices, stack, d = [slices[i] for i in keep], stack[keep], d[keep]

    if len(slices) < 2:
        raise CTInputError(source, "a single 2D slice is not a volume (need a series of CT slices)")

    gaps = np.diff(d)
    expected = _blocks_expected_gap(gaps, [s.thickness for s in slices])
    missing = np.nonzero(gaps >= GAP_FACTOR * expected)[0]
    if missing.size:
        g = int(missing[0])
        raise CTInputError(
            source,
            f"missing slice(s): gap of {gaps[g]:.2f} mm between slice positions {d[g]:.2f} and {d[g + 1]:.2f} mm "
            f"(slices {g + 1} and {g + 2} of {len(slices)}) is {gaps[g] / expected[g]:.1f}× the usual "
            f"{expected[g]:.2f} mm spacing",
        )

    drow, dcol = slices[0].pixel_spacing
    ipp = np.stack([s.ipp for s in slices])
    offsets = ipp - ipp[0]
    off_normal = offsets - np.outer(offsets @ n, n)
    shear_mm = float(np.linalg.norm(off_normal, axis=1).max())
    sheared = shear_mm > 0.1 * min(drow, dcol)
    uneven = float(gaps.max() - gaps.min()) > UNEVEN_TOLERANCE * float(np.median(gaps))

    if not sheared and not uneven:
        spacing = float(d[-1] - d[0]) / (len(slices) - 1)
        affine = np.eye(4)
        affine[:3, 0] = row * dcol
        affine[:3, 1] = col * drow
        affine[:3, 2] = n * spacing
        affine[:3, 3] = ipp[0]
        return np.ascontiguousarray(stack.transpose(2, 1, 0)), affine, notes, slices

    # Target slice spacing: the finest usual spacing, so thin-slice parts keep their resolution.
    target = float(np.min(expected))
    if sheared:
        stacking = ipp[-1] - ipp[0]
        tag = float_or_none(slices[0].header.get("GantryDetectorTilt"))
        angle = tag if tag else math.degrees(math.acos(min(1.0, abs(stacking @ n) / np.linalg.norm(stacking))))
        notes.append(f"resampled: gantry tilt {abs(angle):.1f}° (slice origins sheared by up to {shear_mm:.1f} mm)")
        # World-axis-aligned target: each source direction goes to its nearest LPS axis, sign kept.
        axes = np.zeros((3, 3))
        for a, v in enumerate((row, col, n)):
            axis = int(np.argmax(np.abs(v)))
            axes[:, a] = 0
            axes[axis, a] = np.sign(v[axis])
        if abs(np.linalg.det(axes)) < 0.5:
            raise CTInputError(source, "cannot resample: slice orientation is too oblique to map onto world axes")
    else:
        axes = np.stack([row, col, n], axis=1)
    if uneven:
        notes.append(f"resampled: uneven slice spacing {gaps.min():.2f}–{gaps.max():.2f} mm → {target:.2f} mm")
    spacings = np.array([dcol, drow, target])

    # Bounding box of all pixel centres of the first and last image, in target-axis coordinates.
    corners = np.array(
        [
            p + i * drow * col + j * dcol * row
            for p in (ipp[0], ipp[-1])
            for i in (0, slices[0].rows - 1)
            for j in (0, slices[0].columns - 1)
        ]
    )
    coords = corners @ axes
    lo, hi = coords.min(0), coords.max(0)
    shape = tuple(int(math.floor((hi[a] - lo[a]) / spacings[a] + 1e-6)) + 1 for a in range(3))
    check_size(source, shape, "resampled grid")
    origin = axes @ lo
    out = _resample(stack, ipp, row, col, n, d, (drow, dcol), axes, spacings, origin, shape)
    affine = np.eye(4)
    affine[:3, :3] = axes * spacings
    affine[:3, 3] = origin
    return out, affine, notes, slices


def _resample(
    stack: np.ndarray,
    ipp: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    n: np.ndarray,
    d: np.ndarray,
    pixel_spacing: tuple[float, float],
    axes: np.ndarray,
    spacings: np.ndarray,
    origin: np.ndarray,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Sample a (possibly sheared, unevenly spaced) slice stack on a regular grid; see the module docstring."""
    drow, dcol = pixel_spacing
    out = np.empty(shape, dtype=np.float32)
    a = np.arange(shape[0]) * spacings[0]
    b = np.arange(shape[1]) * spacings[1]
    # In-plane part of each target point (same for every target plane c), in world mm.
    plane = origin + a[:, None, None] * axes[:, 0] + b[None, :, None] * axes[:, 1]
    plane_n, plane_r, plane_c = plane @ n, plane @ row, plane @ col
    ipp_r, ipp_c = ipp @ row, ipp @ col
    step = spacings[2] * axes[:, 2]
    k_index = np.arange(len(d), dtype=np.float64)
    for c in range(shape[2]):
        shift = c * step
        dist = plane_n + shift @ n
        k = np.interp(dist, d, k_index)
        k0 = np.clip(np.floor(k), 0, len(d) - 2).astype(np.intp)
        t = (k - k0).astype(np.float32)
        value = np.zeros(dist.shape, dtype=np.float32)
        for s, w in ((k0, 1.0 - t), (k0 + 1, t)):
            # Exact in-plane position of the point in slice s, relative to that slice's own origin.
            j = (plane_r + shift @ row - ipp_r[s]) / dcol
            i = (plane_c + shift @ col - ipp_c[s]) / drow
            sampled = ndimage.map_coordinates(stack, [s, i, j], order=1, mode="constant", cval=AIR_HU)
            value += w * sampled
        outside = (dist < d[0] - 1e-3) | (dist > d[-1] + 1e-3)
        value[outside] = AIR_HU
        out[:, :, c] = value
    return out
