"""Nodule insertion: deterministic partial-volume occupancy and ΔHU sub-boxes (:class:`InsertedNodule`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ct_projection.nodules.config import PARENCHYMA_HU
from ct_projection.nodules.shape import (
    NoduleParams,
    NoduleShape,
    box_slices,
    cell_bounds,
    dist2_grid,
    half_diagonal,
    nodule_surface_points,
    to_plain,
)
from ct_projection.volume import CTVolume

# Width of the shell around the nodule body whose parenchyma mean is the blending reference.
SHELL_MM = 5.0
# Points evaluated per chunk when supersampling (bounds memory to ~100 MB).
_CHUNK_POINTS = 1 << 20


@dataclass
class InsertedNodule:
    """One nodule as inserted: its params, sub-volumes on the CT grid and measured statistics.

    Attributes:
        params: what was sampled.
        offset: (i, j, k) index of the sub-box's first voxel in the parent grid.
        delta_hu: float32 (a, b, c) new − old HU in the sub-box (zero outside the nodule).
        occupancy: float32 partial-volume fraction in [0, 1] of the nodule (incl. spicules) per voxel.
        core_occupancy: same for the solid core of a part-solid nodule, else None.
        mean_hu: mean HU of the nodule's material: the new volume over the voxels it touches, with the lung share of
            each partial-volume voxel taken out, ``Σ(HU − (1 − occ)·lung) / Σ occ`` (≈ ``hu_target`` for a solid or
            ground-glass nodule whatever the slice thickness; the core/halo mix for a part-solid one).
        mean_hu_partial_volume: occupancy-weighted mean HU of the new volume as a CT ROI over the nodule measures it
            (pulled towards lung by the partial-volume rim, strongly for small nodules on thick slices).
        core_mean_hu: mean HU of the new volume over voxels fully inside (occupancy > 0.99); NaN if none.
        volume_mm3: sum of occupancy × voxel volume.
        diameter_measured_mm: diameter of the sphere with ``volume_mm3``.
        box_world_mm: [[min x, y, z], [max x, y, z]] world extent of the nodule: the union of the cells it touches
            (incl. the partial-volume rim: cell corners, not centres) and its analytic surface incl. spicule tips.
        local_lung_mean_hu: mean HU of the parenchyma shell used as the blending reference.
    """

    params: NoduleParams
    offset: tuple[int, int, int]
    delta_hu: np.ndarray
    occupancy: np.ndarray
    core_occupancy: np.ndarray | None
    mean_hu: float
    mean_hu_partial_volume: float
    core_mean_hu: float
    volume_mm3: float
    diameter_measured_mm: float
    box_world_mm: list[list[float]]
    local_lung_mean_hu: float

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index of the sub-box in the parent grid."""
        return tuple(slice(o, o + s) for o, s in zip(self.offset, self.delta_hu.shape))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able metadata (no arrays; the sub-box shape is recorded)."""
        return {
            "params": self.params.to_dict(),
            "offset": [int(x) for x in self.offset],
            "box_shape": [int(x) for x in self.delta_hu.shape],
            "mean_hu": _nan_to_none(self.mean_hu),
            "mean_hu_partial_volume": _nan_to_none(self.mean_hu_partial_volume),
            "core_mean_hu": _nan_to_none(self.core_mean_hu),
            "volume_mm3": float(self.volume_mm3),
            "diameter_measured_mm": float(self.diameter_measured_mm),
            "box_world_mm": to_plain(self.box_world_mm),
            "local_lung_mean_hu": float(self.local_lung_mean_hu),
        }


def _nan_to_none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _subsample_offsets(spacing: np.ndarray, supersample: int) -> np.ndarray:
    """(S, 3) sub-voxel offsets (voxel units) of a regular grid; coarser axes get proportionally more samples."""
    n = np.maximum(1, np.ceil(supersample * spacing / spacing.min() - 1e-6)).astype(int)
    axes = [(np.arange(k) + 0.5) / k - 0.5 for k in n]
    g = np.meshgrid(*axes, indexing="ij")
    return np.stack([x.ravel() for x in g], axis=1)


def nodule_occupancy(
    params: NoduleParams, vol: CTVolume, supersample: int = 4
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Partial-volume occupancy of a nodule on the CT grid, on a grid-clipped sub-box.

    Cells decided by bounds are set directly; the rest (the rim and the spicules) are averaged over a regular
    sub-voxel grid (``supersample`` per axis at the finest spacing, proportionally more along coarser axes).

    Returns:
        (occupancy float32, core occupancy float32 or None, start index (3,) of the box).
    """
    g = NoduleShape.of(params)
    rot = np.asarray(params.rotation, dtype=np.float64)
    c_vox = np.asarray(params.centre_voxel, dtype=np.float64)
    sl, start = box_slices(vol, c_vox, g.max_extent)
    shape = tuple(s.stop - s.start for s in sl)
    occ = np.zeros(shape, dtype=np.float32)
    core = np.zeros(shape, dtype=np.float32) if g.core_fraction is not None else None
    if occ.size == 0:
        return occ, core, start
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    centres, near, full, full_core = cell_bounds(g, rot, c_vox, vol, idx + start)
    todo = np.flatnonzero(near & ~full)
    occ_flat = occ.reshape(-1)
    occ_flat[full] = 1.0
    core_flat = core.reshape(-1) if core is not None else None
    if core_flat is not None:
        core_flat[full_core] = 1.0
        todo = np.union1d(todo, np.flatnonzero(near & ~full_core))

    offs = _subsample_offsets(vol.spacing, supersample) @ (rot.T @ vol.affine[:3, :3]).T  # (S, 3) local mm
    n_sub = len(offs)
    step = max(1, _CHUNK_POINTS // n_sub)
    for a in range(0, len(todo), step):
        sel = todo[a : a + step]
        pts = (centres[sel][:, None, :] + offs[None, :, :]).reshape(-1, 3)
        inside, inside_core = g.inside(pts)
        occ_flat[sel] = inside.reshape(len(sel), n_sub).mean(axis=1)
        if core_flat is not None and inside_core is not None:
            core_flat[sel] = inside_core.reshape(len(sel), n_sub).mean(axis=1)
    return occ, core, start


def _local_lung_mean(
    hu: np.ndarray, vol: CTVolume, params: NoduleParams, occ: np.ndarray, occ_start: np.ndarray
) -> float:
    """Mean HU of parenchyma voxels in a shell of SHELL_MM just outside the nodule body (original CT)."""
    g = NoduleShape.of(params)
    c_vox = np.asarray(params.centre_voxel, dtype=np.float64)
    inner = g.body_max + half_diagonal(vol.affine)
    sl, start = box_slices(vol, c_vox, inner + SHELL_MM)
    sub = hu[sl]
    d2 = dist2_grid(vol.affine, sub.shape, start, c_vox)
    shell = (d2 > inner * inner) & (d2 <= (inner + SHELL_MM) ** 2)
    vals = sub[shell]
    lung = vals[vals < PARENCHYMA_HU]
    if lung.size >= 10:
        return float(lung.mean())
    if vals.size >= 10:  # consolidated surroundings: the plain shell mean
        return float(vals.mean())
    # Shell off the grid: the occupancy-weighted original HU under the nodule.
    osl = tuple(slice(s, s + n) for s, n in zip(occ_start, occ.shape))
    w = occ.astype(np.float64)
    return float((hu[osl] * w).sum() / max(w.sum(), 1e-12))


def insert_nodules(
    vol: CTVolume, params: list[NoduleParams], supersample: int = 4
) -> tuple[CTVolume, list[InsertedNodule]]:
    """Insert nodules into a copy of ``vol`` (the input is untouched); deterministic.

    Renderers that only need each nodule's ΔHU sub-box (line integrals add) should call :func:`nodule_deltas`,
    which skips the whole-volume copy.
    """
    inserted = nodule_deltas(vol, params, supersample)
    hu_new = vol.hu.copy()
    for n in inserted:
        hu_new[n.slices] += n.delta_hu
    return vol.with_hu(hu_new), inserted


def nodule_deltas(vol: CTVolume, params: list[NoduleParams], supersample: int = 4) -> list[InsertedNodule]:
    """Each nodule's ΔHU sub-box and statistics, as :func:`insert_nodules` would insert them; deterministic.

    Blending keeps the CT's noise texture: ``hu_new = hu_old + occ * (hu_target − m)`` with ``m`` the local lung mean
    (:data:`SHELL_MM` shell of parenchyma around the body); part-solid:
    ``hu_old + occ_outer * (hu_ggo − m) + occ_core * (hu_solid − hu_ggo)``. Each ΔHU is computed against the
    original CT, so overlapping nodules (which the sampler never produces) would simply add.

    Args:
        vol: the CT.
        params: from :meth:`NoduleSampler.get_params` (``centre_voxel`` must refer to this grid).
        supersample: sub-samples per voxel along the finest axis (coarser axes get proportionally more).
    """
    if supersample < 1:
        raise ValueError(f"supersample must be ≥ 1, got {supersample}")
    hu_old = vol.hu
    voxel_mm3 = float(abs(np.linalg.det(vol.affine[:3, :3])))
    parts = []
    for p in params:
        occ, core, start = nodule_occupancy(p, vol, supersample)
        m = _local_lung_mean(hu_old, vol, p, occ, start)
        if p.type == "part_solid":
            assert core is not None and p.hu_ggo is not None and p.hu_solid is not None
            delta = occ * np.float32(p.hu_ggo - m) + core * np.float32(p.hu_solid - p.hu_ggo)
        else:
            delta = occ * np.float32(p.hu_target - m)
        # Trim to the voxels the nodule touches: smaller arrays, and `offset` is the tight bounding sub-box.
        nz = np.nonzero(occ > 0)
        if nz[0].size:
            lo = np.array([a.min() for a in nz])
            hi = np.array([a.max() + 1 for a in nz])
        else:
            lo = hi = np.zeros(3, dtype=int)
        tsl = tuple(slice(a, b) for a, b in zip(lo, hi))
        occ, delta = occ[tsl], delta[tsl].astype(np.float32)
        core = core[tsl] if core is not None else None
        offset = tuple(int(x) for x in start + lo)
        gsl = tuple(slice(o, o + n) for o, n in zip(offset, occ.shape))
        parts.append((p, offset, gsl, occ, core, delta, m))

    out: list[InsertedNodule] = []
    for p, offset, gsl, occ, core, delta, m in parts:
        # The new HU over this sub-box: the original plus every nodule's ΔHU that reaches into it (rims may touch).
        sub = hu_old[gsl].copy()  # float32 adds in parameter order, exactly as the inserted volume holds them
        for _, o2, g2, _, _, d2, _ in parts:
            lo = [max(a.start, b.start) for a, b in zip(gsl, g2)]
            hi = [min(a.stop, b.stop) for a, b in zip(gsl, g2)]
            if all(a < b for a, b in zip(lo, hi)):
                here = tuple(slice(a - g.start, b - g.start) for a, b, g in zip(lo, hi, gsl))
                there = tuple(slice(a - q, b - q) for a, b, q in zip(lo, hi, o2))
                sub[here] += d2[there]
        sub = sub.astype(np.float64)
        w = occ.astype(np.float64)
        vol_mm3 = float(w.sum() * voxel_mm3)
        mean_pv = float((sub * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
        # Unmix: a voxel with occupancy w holds (1 - w) of lung at the local mean m, the rest is nodule material.
        touched = w > 0
        mean_hu = float((sub - (1.0 - w) * m)[touched].sum() / w.sum()) if w.sum() > 0 else float("nan")
        full = occ > 0.99
        core_mean = float(sub[full].mean()) if full.any() else float("nan")
        # World extent of all touched cells: the 8 corners of the sub-box's outer cell boundary.
        corners = np.array(offset, dtype=np.float64) - 0.5 + np.array(
            [[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64
        ) * np.array(occ.shape)
        # Union with the analytic surface (spicule tips thinner than the sub-sampling leave no occupancy).
        cw = np.concatenate([vol.voxel_to_world(corners), nodule_surface_points(p, 1024)], axis=0)
        out.append(
            InsertedNodule(
                params=p,
                offset=offset,  # type: ignore[arg-type]
                delta_hu=delta,
                occupancy=occ,
                core_occupancy=core,
                mean_hu=mean_hu,
                mean_hu_partial_volume=mean_pv,
                core_mean_hu=core_mean,
                volume_mm3=vol_mm3,
                diameter_measured_mm=float((6.0 * vol_mm3 / math.pi) ** (1.0 / 3.0)),
                box_world_mm=[[float(x) for x in cw.min(axis=0)], [float(x) for x in cw.max(axis=0)]],
                local_lung_mean_hu=m,
            )
        )
    return out
