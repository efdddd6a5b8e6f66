"""Nodule shape: sampled :class:`NoduleParams` and their implicit geometry, plus the CT-grid helpers built on it.

Geometry (all in world mm, in the nodule's local frame ``p = R.T @ (x - centre)``):
    * body: ellipsoid with semi-axes ``axes_mm / 2``; a point is inside when ``rho(p) <= 1 + f(u)`` where ``rho`` is
      the ellipsoidal radius, ``u = p/|p|`` and ``f(u) = sum_k c_k T_{m_k}(u . v_k)`` is a lobulation term (Chebyshev
      polynomials of the cosine to random axes: smooth, zonal-harmonic-like lobes; ``sum |c_k|`` = amplitude).
    * part-solid core: the same shape scaled by ``core_fraction``.
    * spicules: straight cones starting half-way inside the body along a local direction ``d``, protruding
      ``length`` mm past the body surface, radius tapering linearly from ``width`` mm to 0 at the tip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ct_projection.nodules.config import NODULE_SHAPES, NODULE_TYPES, check_choice
from ct_projection.volume import CTVolume


@dataclass
class NoduleParams:
    """Everything sampled for one nodule (plain types; ``to_dict`` is the label metadata).

    Attributes:
        centre_world_mm: centre in RAS world mm.
        centre_voxel: centre as fractional voxel index (i, j, k) of the CT it was sampled for.
        diameter_mm: nominal diameter = longest ellipsoid axis (before lobulation/spicules).
        axes_mm: full ellipsoid axis lengths (diameters) along the local axes; ``max(axes_mm) == diameter_mm``.
        rotation: 3x3 rotation, columns are the local axes in world coordinates.
        type: solid | part_solid | ground_glass.
        shape: sphere | lobulated | spiculated.
        hu_solid: solid HU (solid, part-solid core); None for ground glass.
        hu_ggo: ground-glass HU (ground glass, part-solid halo); None for solid.
        core_fraction: part-solid core diameter / nodule diameter; None otherwise.
        lobulation_axes / lobulation_orders / lobulation_coeffs: lobe term k is ``c_k T_{m_k}(u . v_k)``.
        spicule_directions: unit vectors in the local frame.
        spicule_lengths_mm: protrusion beyond the body surface.
        spicule_widths_mm: base radius of each spicule cone.
        juxtapleural: placed touching the pleura.
        lobe: TotalSegmentator lobe name at the centre, or None; side: right | left (or None if unknown).
        zone: upper | middle | lower — the third of its lung's head-foot extent the centre lies in (the radiographic
            lung zones; recorded with or without a lobe map).
        seed: seed of the per-nodule generator it was drawn from (re-drawing with it reproduces the nodule).
    """

    centre_world_mm: list[float]
    centre_voxel: list[float]
    diameter_mm: float
    axes_mm: list[float]
    rotation: list[list[float]]
    type: str = "solid"
    shape: str = "sphere"
    hu_solid: float | None = 40.0
    hu_ggo: float | None = None
    core_fraction: float | None = None
    lobulation_axes: list[list[float]] = field(default_factory=list)
    lobulation_orders: list[int] = field(default_factory=list)
    lobulation_coeffs: list[float] = field(default_factory=list)
    spicule_directions: list[list[float]] = field(default_factory=list)
    spicule_lengths_mm: list[float] = field(default_factory=list)
    spicule_widths_mm: list[float] = field(default_factory=list)
    juxtapleural: bool = False
    lobe: str | None = None
    side: str | None = None
    zone: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        check_choice("type", self.type, NODULE_TYPES)
        check_choice("shape", self.shape, NODULE_SHAPES)
        if self.type in ("solid", "part_solid") and self.hu_solid is None:
            raise ValueError(f"{self.type} nodule needs hu_solid")
        if self.type in ("ground_glass", "part_solid") and self.hu_ggo is None:
            raise ValueError(f"{self.type} nodule needs hu_ggo")
        if self.type == "part_solid" and self.core_fraction is None:
            raise ValueError("part_solid nodule needs core_fraction")

    @property
    def hu_target(self) -> float:
        """HU of the nodule's outer part (solid for solid nodules, ground glass otherwise)."""
        return float(self.hu_solid if self.type == "solid" else self.hu_ggo)  # type: ignore[arg-type]

    @property
    def max_extent_mm(self) -> float:
        """Largest distance from the centre to any point of the nodule (incl. lobulation and spicules)."""
        return NoduleShape.of(self).max_extent

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every sampled value (plus the derived ``max_extent_mm`` and ``hu_target``)."""
        out = {f.name: to_plain(getattr(self, f.name)) for f in fields(self)}
        out["max_extent_mm"] = self.max_extent_mm
        out["hu_target"] = self.hu_target
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoduleParams:
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def to_plain(v: Any) -> Any:
    """Numpy scalars/arrays and tuples → JSON-able Python types."""
    if isinstance(v, np.ndarray):
        return to_plain(v.tolist())
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): to_plain(x) for k, x in v.items()}
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


@dataclass(frozen=True)
class NoduleShape:
    """Array form of a nodule's implicit shape in its local frame (mm)."""

    semi: np.ndarray  # (3,) semi-axes
    lob_axes: np.ndarray  # (K, 3)
    lob_orders: np.ndarray  # (K,)
    lob_coeffs: np.ndarray  # (K,)
    core_fraction: float | None
    sp_dirs: np.ndarray  # (S, 3)
    sp_s0: np.ndarray  # (S,) start of each cone along its axis
    sp_tip: np.ndarray  # (S,) tip along its axis
    sp_w: np.ndarray  # (S,) base radius

    @staticmethod
    def of(p: NoduleParams) -> NoduleShape:
        semi = np.asarray(p.axes_mm, dtype=np.float64) / 2.0
        lob_axes = np.asarray(p.lobulation_axes, dtype=np.float64).reshape(-1, 3)
        lob_axes = lob_axes / np.maximum(np.linalg.norm(lob_axes, axis=1, keepdims=True), 1e-12)
        sp_dirs = np.asarray(p.spicule_directions, dtype=np.float64).reshape(-1, 3)
        sp_dirs = sp_dirs / np.maximum(np.linalg.norm(sp_dirs, axis=1, keepdims=True), 1e-12)
        g = NoduleShape(
            semi=semi,
            lob_axes=lob_axes,
            lob_orders=np.asarray(p.lobulation_orders, dtype=np.int64).reshape(-1),
            lob_coeffs=np.asarray(p.lobulation_coeffs, dtype=np.float64).reshape(-1),
            core_fraction=p.core_fraction if p.type == "part_solid" else None,
            sp_dirs=sp_dirs,
            sp_s0=np.zeros(len(sp_dirs)),
            sp_tip=np.zeros(len(sp_dirs)),
            sp_w=np.asarray(p.spicule_widths_mm, dtype=np.float64).reshape(-1),
        )
        if len(sp_dirs):
            # Spicules start half-way inside the body so they stay attached, and end `length` past the surface.
            t_surf = g.surface_radius(sp_dirs)
            object.__setattr__(g, "sp_s0", 0.5 * t_surf)
            object.__setattr__(g, "sp_tip", t_surf + np.asarray(p.spicule_lengths_mm, dtype=np.float64))
        return g

    @property
    def amplitude(self) -> float:
        return float(np.abs(self.lob_coeffs).sum())

    @property
    def body_max(self) -> float:
        """Upper bound of the body's radius (longest semi-axis × (1 + lobulation amplitude))."""
        return float(self.semi.max() * (1.0 + self.amplitude))

    @property
    def max_extent(self) -> float:
        ext = self.body_max
        if len(self.sp_dirs):
            # A cone's farthest point is its tip or its base rim (the distance² along it is convex).
            ext = max(ext, float(self.sp_tip.max()), float(np.sqrt(self.sp_s0**2 + self.sp_w**2).max()))
        return ext

    def farthest(self, n: int = 2048) -> tuple[np.ndarray, float]:
        """Local unit direction and distance of the nodule's farthest point (body sampled on n directions, tips)."""
        u = fibonacci_sphere(n)
        t = self.surface_radius(u)
        k = int(np.argmax(t))
        if len(self.sp_dirs) and float(self.sp_tip.max()) > t[k]:
            j = int(np.argmax(self.sp_tip))
            return self.sp_dirs[j], float(self.sp_tip[j])
        return u[k], float(t[k])

    def lobulation(self, u: np.ndarray) -> np.ndarray:
        """f(u) for (N, 3) unit vectors: sum_k c_k T_{m_k}(u . v_k) (Chebyshev → smooth on the sphere)."""
        f = np.zeros(len(u))
        if not len(self.lob_coeffs):
            return f
        x = np.clip(u @ self.lob_axes.T, -1.0, 1.0)  # (N, K)
        t_prev, t_cur = np.ones_like(x), x
        for m in range(1, int(self.lob_orders.max()) + 1):
            if m > 1:
                t_prev, t_cur = t_cur, 2.0 * x * t_cur - t_prev
            sel = self.lob_orders == m
            if sel.any():
                f += t_cur[:, sel] @ self.lob_coeffs[sel]
        return f

    def surface_radius(self, u: np.ndarray) -> np.ndarray:
        """Distance from the centre to the body surface along (N, 3) unit directions."""
        return (1.0 + self.lobulation(u)) / np.linalg.norm(u / self.semi, axis=1)

    def inside(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Inside-tests of (N, 3) local points: (outer incl. spicules, part-solid core or None)."""
        r2 = np.einsum("ij,ij->i", p, p)
        rho = np.sqrt(np.einsum("ij,ij->i", p / self.semi, p / self.semi))
        if len(self.lob_coeffs):
            u = p / np.maximum(np.sqrt(r2), 1e-12)[:, None]
            lim = 1.0 + self.lobulation(u)
        else:
            lim = np.ones(len(p))
        outer = rho <= lim
        core = rho <= self.core_fraction * lim if self.core_fraction is not None else None
        for d, s0, tip, w in zip(self.sp_dirs, self.sp_s0, self.sp_tip, self.sp_w):
            s = p @ d
            on = (s >= s0) & (s <= tip)
            rad = w * (tip - s) / max(tip - s0, 1e-12)
            outer |= on & (r2 - s * s <= rad * rad)
        return outer, core


def fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) near-uniform deterministic unit vectors."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / max(n, 1)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    rr = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    return np.stack([rr * np.cos(phi), rr * np.sin(phi), z], axis=1)


def half_diagonal(affine: np.ndarray) -> float:
    """Half the voxel diagonal in mm: the farthest a point of a voxel's cell is from its centre."""
    # Per-axis max over the cell's corners, then the norm: exact for axis-aligned grids, an upper bound otherwise.
    return float(0.5 * np.linalg.norm(np.abs(affine[:3, :3]).sum(axis=1)))


def box_bounds(vol: CTVolume, c_vox: np.ndarray, radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Unclipped [lo, hi) index box holding every voxel whose cell can meet the ball (centre c_vox, radius_mm)."""
    inv = np.linalg.inv(vol.affine[:3, :3])
    half = radius_mm * np.linalg.norm(inv, axis=1) + 0.5  # ball's extent along each index axis (+ half a cell)
    return np.floor(c_vox - half).astype(int), np.ceil(c_vox + half).astype(int) + 1


def box_slices(vol: CTVolume, c_vox: np.ndarray, radius_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """The same box clipped to the grid, as slices and its start index."""
    lo, hi = box_bounds(vol, c_vox, radius_mm)
    lo = np.maximum(lo, 0)
    hi = np.maximum(np.minimum(hi, np.array(vol.shape)), lo)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), lo


def dist2_grid(affine: np.ndarray, shape: tuple[int, ...], start: np.ndarray, c_vox: np.ndarray) -> np.ndarray:
    """Squared world distance (mm²) from c_vox of every voxel centre in a box starting at ``start``."""
    gram = affine[:3, :3].T @ affine[:3, :3]
    d = [
        (np.arange(n) + start[a] - c_vox[a]).reshape([-1 if b == a else 1 for b in range(3)])
        for a, n in enumerate(shape)
    ]
    out = np.zeros(shape)
    for a in range(3):
        out = out + gram[a, a] * d[a] * d[a]
        for b in range(a + 1, 3):
            if gram[a, b] != 0.0:  # oblique grids only
                out = out + 2.0 * gram[a, b] * d[a] * d[b]
    return out


def cell_bounds(
    g: NoduleShape, rot: np.ndarray, c_vox: np.ndarray, vol: CTVolume, ijk: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classify whole voxel cells (indices (V, 3)) by rigorous bounds.

    Returns (local-frame centres (V, 3), may touch the nodule (V,), surely inside the body (V,), surely inside the
    part-solid core (V,)). Over a cell (every point within half_diag of its centre) the ellipsoidal radius rho moves
    by at most half_diag / min(semi), and the lobulation limit 1 + f(u) by at most L_f × (angle the cell subtends),
    where L_f = sum |c_k| m_k bounds f's angular slope (d/dθ cos(mθ) ≤ m).
    """
    M = rot.T @ vol.affine[:3, :3]  # voxel-index displacement → local-frame mm
    half_diag = half_diagonal(vol.affine)
    centres = (ijk - c_vox) @ M.T
    r = np.linalg.norm(centres, axis=1)
    rho = np.linalg.norm(centres / g.semi, axis=1)
    lim = 1.0 + g.lobulation(centres / np.maximum(r, 1e-12)[:, None])
    slope = float((np.abs(g.lob_coeffs) * g.lob_orders).sum())
    angle = np.where(r > half_diag, np.arcsin(np.minimum(half_diag / np.maximum(r, 1e-12), 1.0)), math.pi)
    d_rho = half_diag / float(g.semi.min())
    lim_lo, lim_hi = lim - slope * angle, lim + slope * angle
    near = rho - d_rho <= lim_hi
    if len(g.sp_dirs):
        s = np.clip(centres @ g.sp_dirs.T, g.sp_s0, g.sp_tip)  # closest point on each spicule axis
        dist_axis = np.linalg.norm(centres[:, None, :] - s[..., None] * g.sp_dirs[None], axis=2)
        near |= (dist_axis <= g.sp_w + half_diag).any(axis=1)
    full = rho + d_rho < lim_lo
    full_core = rho + d_rho < (g.core_fraction or 0.0) * lim_lo
    return centres, near, full, full_core


def nodule_surface_points(params: NoduleParams, n: int = 512, include_spicules: bool = True) -> np.ndarray:
    """(N, 3) world-mm points on the nodule's outer surface: ``n`` body points plus, per spicule, its tip and rings
    on its cone beyond the body surface (the renderer cross-checks 2D boxes with their projections)."""
    g = NoduleShape.of(params)
    rot = np.asarray(params.rotation, dtype=np.float64)
    c = np.asarray(params.centre_world_mm, dtype=np.float64)
    u = fibonacci_sphere(n)
    pts = [u * g.surface_radius(u)[:, None]]
    if include_spicules:
        for d, s0, tip, w in zip(g.sp_dirs, g.sp_s0, g.sp_tip, g.sp_w):
            pts.append(tip * d[None])
            # Two unit vectors perpendicular to the spicule axis.
            e1 = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
            e1 /= np.linalg.norm(e1)
            e2 = np.cross(d, e1)
            t_surf = 2.0 * s0
            ang = np.linspace(0.0, 2.0 * math.pi, 8, endpoint=False)
            for frac in (0.25, 0.5, 0.75):
                s = t_surf + frac * (tip - t_surf)
                rad = w * (tip - s) / max(tip - s0, 1e-12)
                ring = s * d + rad * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2)
                pts.append(ring)
    local = np.concatenate(pts, axis=0)
    return local @ rot.T + c
