"""Synthetic lung nodules: sample every random parameter first, then insert them deterministically.

Follows the torchio/MONAI random-transform pattern: :meth:`NoduleSampler.get_params` draws everything (count, size,
type, HU, shape, orientation, lobulation, spicules, position) from a ``numpy.random.Generator`` and returns plain
:class:`NoduleParams` records; :func:`insert_nodules` applies them with no randomness, so the same params always give
byte-identical ΔHU sub-volumes. Every sampled value is recorded and becomes label metadata (``to_dict``).

Geometry (all in world mm, in the nodule's local frame ``p = R.T @ (x - centre)``):
    * body: ellipsoid with semi-axes ``axes_mm / 2``; a point is inside when ``rho(p) <= 1 + f(u)`` where ``rho`` is
      the ellipsoidal radius, ``u = p/|p|`` and ``f(u) = sum_k c_k T_{m_k}(u . v_k)`` is a lobulation term (Chebyshev
      polynomials of the cosine to random axes: smooth, zonal-harmonic-like lobes; ``sum |c_k|`` = amplitude).
    * part-solid core: the same shape scaled by ``core_fraction``.
    * spicules: straight cones starting half-way inside the body along a local direction ``d``, protruding
      ``length`` mm past the body surface, radius tapering linearly from ``width`` mm to 0 at the tip.

Placement (see :meth:`NoduleSampler.get_params`), all decided from distance maps computed once per CT
(:meth:`NoduleSampler.prepare`) and thresholded with ``np.flatnonzero``:
    * inside the lung: every voxel whose cell the nodule (max extent incl. spicules) can touch is lung — the lung EDT
      at the centre ≥ extent + half voxel diagonal + sub-voxel jitter (+ ``margin_mm`` unless juxtapleural);
    * juxtapleural: the farthest point (long axis or a spicule tip) is turned toward the nearest non-lung voxel and
      put within ~1 mm of the cell-safe distance; an exact cell test keeps the rest inside;
    * parenchyma: ≥ ``parenchyma_min_fraction`` of the lung voxels within the extent are below −500 HU;
    * thick dense structures (dense lung voxels that hold a ball of ``dense_min_size_mm`` diameter: large vessels,
      hila, real tumours) stay ``margin_mm`` away; thinner vessels only count against the parenchyma fraction;
    * other nodules: centre distance ≥ extent1 + extent2 + ``margin_mm``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import ndtr, ndtri

from ct_projection.volume import CTVolume

NODULE_TYPES: tuple[str, ...] = ("solid", "part_solid", "ground_glass")
NODULE_SHAPES: tuple[str, ...] = ("sphere", "lobulated", "spiculated")
DIAMETER_DISTRIBUTIONS: tuple[str, ...] = ("lognormal", "uniform", "loguniform")
FAILURE_MODES: tuple[str, ...] = ("warn", "raise")

# TotalSegmentator lobe ids.
LOBE_NAMES: dict[int, str] = {
    10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left",
    12: "lung_upper_lobe_right",
    13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right",
}
LOBE_SIDES: dict[int, str] = {10: "left", 11: "left", 12: "right", 13: "right", 14: "right"}

# Below this HU a voxel counts as aerated lung parenchyma (vessels, tumours, chest wall are above).
PARENCHYMA_HU = -500.0
# Width of the shell around the nodule body whose parenchyma mean is the blending reference.
SHELL_MM = 5.0
# Points evaluated per chunk when supersampling (bounds memory to ~100 MB).
_CHUNK_POINTS = 1 << 20


class NoduleConfigError(ValueError):
    """An invalid :class:`NoduleConfig` value; the message lists what is allowed."""


class NodulePlacementError(RuntimeError):
    """A nodule could not be placed anywhere (raised only with ``on_failure='raise'``)."""


class NodulePlacementWarning(UserWarning):
    """A nodule could not be placed and was skipped (``on_failure='warn'``)."""


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------

_RANGE_FIELDS = (
    "count_range",
    "diameter_range_mm",
    "hu_solid_range",
    "hu_ggo_range",
    "core_fraction_range",
    "axis_ratio_range",
    "lobulation_amplitude_range",
    "lobulation_terms_range",
    "lobulation_order_range",
    "spicule_count_range",
    "spicule_length_range",
    "spicule_width_range_mm",
)
_INT_RANGE_FIELDS = ("count_range", "lobulation_terms_range", "lobulation_order_range", "spicule_count_range")


@dataclass
class NoduleConfig:
    """Distributions of everything :class:`NoduleSampler` draws; plain types so it saves as JSON beside outputs.

    Attributes:
        count_range: nodules per image, inclusive integer range (uniform).
        diameter_range_mm: nominal (longest-axis) diameter bounds; every draw lies inside.
        diameter_distribution: ``lognormal`` (default: median ``diameter_median_mm``, log-sd ``diameter_sigma``,
            truncated to the range by inverse-CDF sampling; the defaults, 6–30 mm, 15 mm / 0.40, are the ``node21``
            preset of :mod:`ct_projection.size_presets`, which documents their source),
            ``uniform`` or ``loguniform`` over the range.
        diameter_median_mm / diameter_sigma: log-normal parameters.
        type_probs: probabilities of solid / part_solid / ground_glass (missing keys = 0; normalised).
        hu_solid_range: solid tissue HU (solid nodules and part-solid cores).
        hu_ggo_range: ground-glass HU (ground-glass nodules and part-solid halos).
        core_fraction_range: part-solid core diameter as a fraction of the nodule diameter.
        shape_probs: probabilities of sphere / lobulated / spiculated (missing keys = 0; normalised).
        axis_ratio_range: the two shorter ellipsoid axes as fractions of the longest (all shapes).
        lobulation_amplitude_range: peak radial perturbation as a fraction of the radius (lobulated, spiculated).
        lobulation_terms_range / lobulation_order_range: number of cosine lobes and their polynomial order.
        spicule_count_range: spicules per spiculated nodule.
        spicule_length_range: protrusion beyond the body surface as a fraction of the nominal radius.
        spicule_width_range_mm: spicule base radius in mm (clipped to ≤ 0.25 × nominal radius).
        juxtapleural_prob: probability that a nodule touches the pleura (its extent reaches the lung boundary).
        margin_mm: clearance kept from other nodules, the pleura (non-juxtapleural) and thick dense structures.
        supersample: sub-samples per voxel along the finest axis (coarser axes get proportionally more).
        parenchyma_min_fraction: required fraction of voxels within the nodule's extent below −500 HU.
        dense_min_size_mm: dense (≥ −500 HU) lung structures at least this thick (morphological opening) must stay
            ``margin_mm`` away from the nodule; thinner ones (small vessels) only count against
            ``parenchyma_min_fraction``. 0 forbids any dense voxel.
        max_placement_tries: candidate centres tried per size before shrinking.
        max_size_retries: smaller re-draws (each ≤ 0.8× the previous diameter) before giving up.
        on_failure: ``warn`` (skip the nodule with a :class:`NodulePlacementWarning`) or ``raise``.
    """

    count_range: tuple[int, int] = (1, 3)
    diameter_range_mm: tuple[float, float] = (6.0, 30.0)
    diameter_distribution: str = "lognormal"
    diameter_median_mm: float = 15.0
    diameter_sigma: float = 0.40
    type_probs: dict[str, float] = field(
        default_factory=lambda: {"solid": 0.6, "part_solid": 0.2, "ground_glass": 0.2}
    )
    hu_solid_range: tuple[float, float] = (-10.0, 100.0)
    hu_ggo_range: tuple[float, float] = (-750.0, -300.0)
    core_fraction_range: tuple[float, float] = (0.3, 0.7)
    shape_probs: dict[str, float] = field(
        default_factory=lambda: {"sphere": 0.5, "lobulated": 0.3, "spiculated": 0.2}
    )
    axis_ratio_range: tuple[float, float] = (0.8, 1.0)
    lobulation_amplitude_range: tuple[float, float] = (0.05, 0.15)
    lobulation_terms_range: tuple[int, int] = (2, 4)
    lobulation_order_range: tuple[int, int] = (2, 5)
    spicule_count_range: tuple[int, int] = (4, 12)
    spicule_length_range: tuple[float, float] = (0.3, 1.0)
    spicule_width_range_mm: tuple[float, float] = (0.5, 1.2)
    juxtapleural_prob: float = 0.1
    margin_mm: float = 2.0
    supersample: int = 4
    parenchyma_min_fraction: float = 0.9
    dense_min_size_mm: float = 3.0
    max_placement_tries: int = 200
    max_size_retries: int = 3
    on_failure: str = "warn"

    def __post_init__(self) -> None:
        for name in _RANGE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise NoduleConfigError(f"{name} must be a (min, max) pair, got {value!r}")
            cast = int if name in _INT_RANGE_FIELDS else float
            lo, hi = cast(value[0]), cast(value[1])
            if lo > hi:
                raise NoduleConfigError(f"{name}: min {lo} > max {hi}")
            setattr(self, name, (lo, hi))
        self.type_probs = _check_probs("type", self.type_probs, NODULE_TYPES)
        self.shape_probs = _check_probs("shape", self.shape_probs, NODULE_SHAPES)
        _check_choice("diameter_distribution", self.diameter_distribution, DIAMETER_DISTRIBUTIONS)
        _check_choice("on_failure", self.on_failure, FAILURE_MODES)
        _check_bounds("count_range", self.count_range, 0, None)
        _check_bounds("diameter_range_mm", self.diameter_range_mm, 1e-3, None)
        _check_bounds("core_fraction_range", self.core_fraction_range, 0.05, 0.95)
        _check_bounds("axis_ratio_range", self.axis_ratio_range, 0.1, 1.0)
        _check_bounds("lobulation_amplitude_range", self.lobulation_amplitude_range, 0.0, 0.5)
        _check_bounds("lobulation_terms_range", self.lobulation_terms_range, 1, None)
        _check_bounds("lobulation_order_range", self.lobulation_order_range, 1, 12)
        _check_bounds("spicule_count_range", self.spicule_count_range, 0, None)
        _check_bounds("spicule_length_range", self.spicule_length_range, 0.0, None)
        _check_bounds("spicule_width_range_mm", self.spicule_width_range_mm, 0.0, None)
        _check_bounds("juxtapleural_prob", (self.juxtapleural_prob,) * 2, 0.0, 1.0)
        _check_bounds("parenchyma_min_fraction", (self.parenchyma_min_fraction,) * 2, 0.0, 1.0)
        _check_bounds("diameter_median_mm", (self.diameter_median_mm,) * 2, 1e-3, None)
        _check_bounds("diameter_sigma", (self.diameter_sigma,) * 2, 1e-3, None)
        _check_bounds("margin_mm", (self.margin_mm,) * 2, 0.0, None)
        _check_bounds("dense_min_size_mm", (self.dense_min_size_mm,) * 2, 0.0, 20.0)
        for name in ("supersample", "max_placement_tries"):
            if int(getattr(self, name)) < 1:
                raise NoduleConfigError(f"{name} must be an integer ≥ 1, got {getattr(self, name)!r}")
        if int(self.max_size_retries) < 0:
            raise NoduleConfigError(f"max_size_retries must be an integer ≥ 0, got {self.max_size_retries!r}")
        self.supersample = int(self.supersample)
        self.max_placement_tries = int(self.max_placement_tries)
        self.max_size_retries = int(self.max_size_retries)
        for name in ("diameter_median_mm", "diameter_sigma", "juxtapleural_prob", "margin_mm",
                     "parenchyma_min_fraction", "dense_min_size_mm"):
            setattr(self, name, float(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (ranges as 2-element lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoduleConfig:
        """Inverse of :meth:`to_dict`, strictly validated (data.settings); a one-line NoduleConfigError."""
        from data.settings import SettingsError, load_settings

        try:
            return load_settings(cls, data, section="nodules")
        except SettingsError as err:
            raise NoduleConfigError(str(err)) from None


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise NoduleConfigError(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}")


def _check_probs(kind: str, probs: dict[str, float], allowed: tuple[str, ...]) -> dict[str, float]:
    """Validate a {name: probability} dict; returns it in canonical key order with float values."""
    if not isinstance(probs, dict):
        raise NoduleConfigError(f"{kind}_probs must be a dict over {', '.join(allowed)}, got {probs!r}")
    for key in probs:
        if key not in allowed:
            raise NoduleConfigError(f"{kind}_probs: unknown {kind} {key!r}: expected one of {', '.join(allowed)}")
    out = {k: float(probs.get(k, 0.0)) for k in allowed}
    if any(not math.isfinite(v) or v < 0 for v in out.values()) or sum(out.values()) <= 0:
        raise NoduleConfigError(f"{kind}_probs must be non-negative with a positive sum, got {probs!r}")
    return out


def _check_bounds(name: str, rng: tuple[float, float], lo: float | None, hi: float | None) -> None:
    for v in rng:
        if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            allowed = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise NoduleConfigError(f"{name}: value {v} outside the allowed range {allowed}")


# --------------------------------------------------------------------------------------------------------------------
# Parameters and geometry
# --------------------------------------------------------------------------------------------------------------------


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
        _check_choice("type", self.type, NODULE_TYPES)
        _check_choice("shape", self.shape, NODULE_SHAPES)
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
        return _Geometry.of(self).max_extent

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every sampled value (plus the derived ``max_extent_mm`` and ``hu_target``)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        out["max_extent_mm"] = self.max_extent_mm
        out["hu_target"] = self.hu_target
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoduleParams:
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _plain(v: Any) -> Any:
    """Numpy scalars/arrays and tuples → JSON-able Python types."""
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


@dataclass(frozen=True)
class _Geometry:
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
    def of(p: NoduleParams) -> _Geometry:
        semi = np.asarray(p.axes_mm, dtype=np.float64) / 2.0
        lob_axes = np.asarray(p.lobulation_axes, dtype=np.float64).reshape(-1, 3)
        lob_axes = lob_axes / np.maximum(np.linalg.norm(lob_axes, axis=1, keepdims=True), 1e-12)
        sp_dirs = np.asarray(p.spicule_directions, dtype=np.float64).reshape(-1, 3)
        sp_dirs = sp_dirs / np.maximum(np.linalg.norm(sp_dirs, axis=1, keepdims=True), 1e-12)
        g = _Geometry(
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
        u = _fibonacci_sphere(n)
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


def _fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) near-uniform deterministic unit vectors."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / max(n, 1)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    rr = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    return np.stack([rr * np.cos(phi), rr * np.sin(phi), z], axis=1)


def _random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) directions uniform on the sphere."""
    v = rng.normal(size=(n, 3))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix (from a normalised Gaussian quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _categorical(rng: np.random.Generator, probs: dict[str, float]) -> str:
    """Draw a key with the given (unnormalised) probabilities, iterating in the dict's canonical order."""
    keys = list(probs)
    cdf = np.cumsum([probs[k] for k in keys])
    return keys[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(keys) - 1)]


def _half_diagonal(affine: np.ndarray) -> float:
    """Half the voxel diagonal in mm: the farthest a point of a voxel's cell is from its centre."""
    # Per-axis max over the cell's corners, then the norm: exact for axis-aligned grids, an upper bound otherwise.
    return float(0.5 * np.linalg.norm(np.abs(affine[:3, :3]).sum(axis=1)))


# --------------------------------------------------------------------------------------------------------------------
# Sampling / placement
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PlacementMap:
    """Per-CT placement data computed once (:meth:`NoduleSampler.prepare`) and reused across draws.

    Both maps live on the lung mask's bounding box padded by one voxel (outside the scan counts as non-lung).

    Attributes:
        edt: float32 distance (mm) from each voxel centre to the nearest non-lung voxel centre.
        thick_dist: float32 distance (mm) to the nearest centre of a ball of radius ``dense_min_size_mm / 2`` made
            only of dense (≥ −500 HU) lung voxels (vessels that thick, hila, tumours); inf where there is none.
        offset: index of the maps' first voxel in the CT grid (may be −1 where the lung touches the grid edge).
        shape: CT grid shape; affine: CT affine.
        midline_x: world x (mm) of the lung mask's centroid (right/left when no lobe map is given).
        lung_z: per side ("right", "left"), the world z (mm) range of that lung, apex to base (for ``zone``).
        key: fingerprint of (grid, mask, HU under the mask box, dense settings): a cached map is reused only for
            the same inputs.
    """

    edt: np.ndarray
    thick_dist: np.ndarray
    offset: tuple[int, int, int]
    shape: tuple[int, int, int]
    affine: np.ndarray
    midline_x: float
    key: str
    lung_z: dict[str, tuple[float, float]] = field(default_factory=dict)


def _placement_key(vol: CTVolume, lung_mask: np.ndarray, box: tuple[slice, ...], dense_min_size_mm: float) -> str:
    h = hashlib.sha1()
    h.update(repr((tuple(lung_mask.shape), dense_min_size_mm, PARENCHYMA_HU)).encode())
    h.update(np.ascontiguousarray(vol.affine, dtype=np.float64).tobytes())
    h.update(np.packbits(lung_mask).tobytes())
    h.update(np.ascontiguousarray(vol.hu[box]).tobytes())
    return h.hexdigest()


class NoduleSampler:
    """Draws :class:`NoduleParams` for one CT (all randomness here; :func:`insert_nodules` is deterministic)."""

    def __init__(self, config: NoduleConfig | None = None) -> None:
        self.config = config or NoduleConfig()
        self._cache: PlacementMap | None = None

    # -- per-CT preparation ------------------------------------------------------------------------------------------

    def prepare(self, vol: CTVolume, lung_mask: np.ndarray) -> PlacementMap:
        """Compute (and cache on the sampler) the distance maps; a few seconds on a 512×512×~130 CT.

        The map depends on this sampler's ``dense_min_size_mm``; the cache is keyed on a hash of the grid, mask and
        the HU under the mask's box (~0.1 s), so a changed CT or mask is never served a stale map.
        """
        lung_mask = np.asarray(lung_mask, dtype=bool)
        if lung_mask.shape != vol.shape:
            raise ValueError(f"lung mask shape {lung_mask.shape} does not match CT grid {vol.shape}")
        if not lung_mask.any():
            raise NodulePlacementError("lung mask is empty: nowhere to place nodules")
        # Crop to the mask's bounding box plus a one-voxel False border: exact (everything outside the box is
        # non-lung anyway), much cheaper than the full grid, and it makes the scan's edge count as non-lung.
        lo, hi = [], []
        for ax in range(3):
            proj = np.flatnonzero(lung_mask.any(axis=tuple(a for a in range(3) if a != ax)))
            lo.append(int(proj[0]))
            hi.append(int(proj[-1]) + 1)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        key = _placement_key(vol, lung_mask, box, self.config.dense_min_size_mm)
        if self._cache is not None and self._cache.key == key:
            return self._cache
        spacing = vol.spacing
        crop = np.pad(lung_mask[box], 1)
        edt = ndimage.distance_transform_edt(crop, sampling=spacing).astype(np.float32)
        # Thick dense structures, by a morphological opening done with distance transforms (cost independent of
        # the size): centres of all-dense balls, then the distance to the nearest such centre.
        dense = np.pad((vol.hu[box] >= PARENCHYMA_HU) & lung_mask[box], 1)
        r_struct = self.config.dense_min_size_mm / 2.0
        centres = ndimage.distance_transform_edt(dense, sampling=spacing) > r_struct if r_struct > 0 else dense
        if centres.any():
            thick = ndimage.distance_transform_edt(~centres, sampling=spacing).astype(np.float32)
        else:
            thick = np.full(crop.shape, np.inf, dtype=np.float32)
        offset = (lo[0] - 1, lo[1] - 1, lo[2] - 1)
        # Mask centroid from per-axis projections (cheap, no index arrays).
        n = float(crop.sum())
        centroid = [
            float((crop.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(crop.shape[ax])).sum() / n)
            + offset[ax]
            for ax in range(3)
        ]
        midline_x = float(vol.voxel_to_world(np.array(centroid))[0, 0])
        # Each lung's head-foot extent (RAS+ canonical grid: +i is the patient's right, +k superior).
        split = int(round(centroid[0])) - offset[0]
        lung_z: dict[str, tuple[float, float]] = {}
        for side, part in (("left", crop[:split]), ("right", crop[split:])):
            ks = np.flatnonzero(part.any(axis=(0, 1)))
            if ks.size:
                zs = vol.voxel_to_world(np.array([[0, 0, ks[0] + offset[2]], [0, 0, ks[-1] + offset[2]]], float))[:, 2]
                lung_z[side] = (float(zs.min()), float(zs.max()))
        self._cache = PlacementMap(edt, thick, offset, vol.shape, vol.affine.copy(), midline_x, key, lung_z)
        return self._cache

    # -- random draws ------------------------------------------------------------------------------------------------

    def sample_diameter(self, rng: np.random.Generator, upper_mm: float | None = None) -> float:
        """One nominal diameter from the configured distribution, truncated to [min, min(max, upper_mm)]."""
        c = self.config
        lo, hi = c.diameter_range_mm
        if upper_mm is not None:
            hi = min(hi, upper_mm)
        if hi <= lo:
            return float(lo)
        if c.diameter_distribution == "uniform":
            return float(rng.uniform(lo, hi))
        if c.diameter_distribution == "loguniform":
            return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        # Truncated log-normal by inverse CDF: one draw, always in range, deterministic.
        mu, sd = np.log(c.diameter_median_mm), c.diameter_sigma
        a, b = ndtr((np.log(lo) - mu) / sd), ndtr((np.log(hi) - mu) / sd)
        u = rng.uniform(a, b) if b > a else a
        return float(np.clip(np.exp(mu + sd * ndtri(np.clip(u, 1e-300, 1 - 1e-16))), lo, hi))

    def get_params(
        self,
        rng: np.random.Generator,
        vol: CTVolume,
        lung_mask: np.ndarray,
        lobes: np.ndarray | None = None,
        placement: PlacementMap | None = None,
    ) -> list[NoduleParams]:
        """Draw the nodule count and every nodule's parameters and position.

        Each nodule is drawn from its own generator seeded from ``rng`` (recorded as ``seed``), so a failed
        placement never shifts the draws of the next nodule. A nodule whose size fits nowhere is re-drawn smaller
        (≤ 0.8× the previous diameter, ``max_size_retries`` times); then it is skipped with a
        :class:`NodulePlacementWarning` (or :class:`NodulePlacementError` with ``on_failure='raise'``), so the
        list may be shorter than the drawn count.

        Args:
            rng: the only source of randomness.
            vol: the CT (HU used to check the tissue under each candidate).
            lung_mask: bool lung mask on the CT grid.
            lobes: optional TotalSegmentator lobe map (10–14) on the CT grid, for ``lobe``/``side``.
            placement: result of :meth:`prepare` (computed or taken from the sampler's cache if omitted).
        """
        lung_mask = np.asarray(lung_mask, dtype=bool)
        pm = placement if placement is not None else self.prepare(vol, lung_mask)
        if pm.shape != vol.shape:
            raise ValueError(f"placement map for grid {pm.shape} does not match CT grid {vol.shape}")
        if lobes is not None and lobes.shape != vol.shape:
            raise ValueError(f"lobe map shape {lobes.shape} does not match CT grid {vol.shape}")
        lo, hi = self.config.count_range
        count = int(rng.integers(lo, hi + 1))
        seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=count)]
        placed: list[NoduleParams] = []
        for i, seed in enumerate(seeds):
            p = self._sample_one(np.random.default_rng(seed), seed, vol, lung_mask, lobes, pm, placed)
            if p is not None:
                placed.append(p)
                continue
            msg = (
                f"nodule {i + 1}/{count}: no position inside the lung fits it even after "
                f"{self.config.max_size_retries} smaller re-draws (min diameter {self.config.diameter_range_mm[0]} mm)"
            )
            if self.config.on_failure == "raise":
                raise NodulePlacementError(msg)
            warnings.warn(msg + "; skipped", NodulePlacementWarning, stacklevel=2)
        return placed

    def apply(
        self, rng: np.random.Generator, vol: CTVolume, lung_mask: np.ndarray, lobes: np.ndarray | None = None
    ) -> tuple[CTVolume, list[InsertedNodule]]:
        """``get_params`` then ``insert_nodules`` with the config's supersampling."""
        params = self.get_params(rng, vol, lung_mask, lobes)
        return insert_nodules(vol, params, supersample=self.config.supersample)

    def _sample_one(
        self,
        rng: np.random.Generator,
        seed: int,
        vol: CTVolume,
        lung_mask: np.ndarray,
        lobes: np.ndarray | None,
        pm: PlacementMap,
        placed: list[NoduleParams],
    ) -> NoduleParams | None:
        """Draw one nodule (size-independent values first, then size and position); None if it fits nowhere."""
        c = self.config
        ntype = _categorical(rng, c.type_probs)
        shape = _categorical(rng, c.shape_probs)
        ratios = np.sort(rng.uniform(*c.axis_ratio_range, size=2))[::-1]
        rotation = _random_rotation(rng)
        hu_solid = float(rng.uniform(*c.hu_solid_range)) if ntype != "ground_glass" else None
        hu_ggo = float(rng.uniform(*c.hu_ggo_range)) if ntype != "solid" else None
        core_fraction = float(rng.uniform(*c.core_fraction_range)) if ntype == "part_solid" else None
        lob_axes = np.zeros((0, 3))
        lob_orders = np.zeros(0, dtype=np.int64)
        lob_coeffs = np.zeros(0)
        if shape in ("lobulated", "spiculated"):
            k = int(rng.integers(c.lobulation_terms_range[0], c.lobulation_terms_range[1] + 1))
            lob_axes = _random_unit(rng, k)
            lob_orders = rng.integers(c.lobulation_order_range[0], c.lobulation_order_range[1] + 1, size=k)
            w = rng.uniform(0.5, 1.0, size=k) * rng.choice([-1.0, 1.0], size=k)
            amp = rng.uniform(*c.lobulation_amplitude_range)
            lob_coeffs = amp * w / np.abs(w).sum()  # sum |c_k| = amplitude, so |f| ≤ amplitude
        sp_dirs = np.zeros((0, 3))
        sp_len_frac = np.zeros(0)
        sp_width = np.zeros(0)
        if shape == "spiculated":
            s = int(rng.integers(c.spicule_count_range[0], c.spicule_count_range[1] + 1))
            sp_dirs = _random_unit(rng, s)
            sp_len_frac = rng.uniform(*c.spicule_length_range, size=s)
            sp_width = rng.uniform(*c.spicule_width_range_mm, size=s)
        juxta = bool(rng.random() < c.juxtapleural_prob)

        diameter: float | None = None
        for _ in range(c.max_size_retries + 1):
            upper = None if diameter is None else 0.8 * diameter
            if upper is not None and upper < c.diameter_range_mm[0]:
                return None
            diameter = self.sample_diameter(rng, upper)
            radius = diameter / 2.0
            p = NoduleParams(
                centre_world_mm=[0.0, 0.0, 0.0],
                centre_voxel=[0.0, 0.0, 0.0],
                diameter_mm=diameter,
                axes_mm=[diameter, diameter * float(ratios[0]), diameter * float(ratios[1])],
                rotation=rotation.tolist(),
                type=ntype,
                shape=shape,
                hu_solid=hu_solid,
                hu_ggo=hu_ggo,
                core_fraction=core_fraction,
                lobulation_axes=lob_axes.tolist(),
                lobulation_orders=[int(m) for m in lob_orders],
                lobulation_coeffs=[float(x) for x in lob_coeffs],
                spicule_directions=sp_dirs.tolist(),
                spicule_lengths_mm=[float(x) for x in sp_len_frac * radius],
                spicule_widths_mm=[float(x) for x in np.minimum(sp_width, 0.25 * radius)],
                juxtapleural=juxta,
                seed=seed,
            )
            # Sub-voxel jitter so nodules sample all partial-volume phases; the clearance below accounts for it.
            jitter = rng.uniform(-0.5, 0.5, size=3)
            found = self._place(rng, p, jitter, vol, lung_mask, pm, placed)
            if found is None:
                continue
            centre, rot = found
            c_vox = centre + jitter
            c_world = vol.voxel_to_world(c_vox)[0]
            p.rotation = rot.tolist()
            p.centre_voxel = [float(x) for x in c_vox]
            p.centre_world_mm = [float(x) for x in c_world]
            p.lobe, p.side = _lobe_and_side(centre, c_world, lobes, pm)
            p.zone = _zone(float(c_world[2]), pm.lung_z.get(p.side))
            return p
        return None

    def _place(
        self,
        rng: np.random.Generator,
        p: NoduleParams,
        jitter: np.ndarray,
        vol: CTVolume,
        lung_mask: np.ndarray,
        pm: PlacementMap,
        placed: list[NoduleParams],
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """A voxel index (3,) whose jittered centre admits the nodule, and its final rotation; or None."""
        c = self.config
        g = _Geometry.of(p)
        extent = g.max_extent
        rot = np.asarray(p.rotation, dtype=np.float64)
        # A non-lung voxel's cell can be touched only if its centre is within extent + half-diagonal of the nodule
        # centre; the maps are measured from the unjittered voxel centre, hence the jitter term.
        half_diag = _half_diagonal(vol.affine)
        jit_mm = float(np.linalg.norm(vol.affine[:3, :3] @ jitter))
        # Thick dense structures (opened by a ball of radius r_struct) stay `margin` away from the extent ball.
        sel = pm.thick_dist >= extent + c.margin_mm + c.dense_min_size_mm / 2.0 + jit_mm + 1e-6
        if p.juxtapleural:
            # Turn the nodule's farthest point (long axis or a spicule tip) toward the nearest pleura and put that
            # point within `band` of it; an exact cell test below keeps every other part inside the lung.
            u_far, t_far = g.farthest()
            band = max(1.0, float(vol.spacing.min()))
            lo_clear, hi_clear = t_far + half_diag + 1e-6, t_far + half_diag + band
            sel &= (pm.edt >= lo_clear - jit_mm) & (pm.edt <= hi_clear + jit_mm)
        else:
            sel &= pm.edt >= extent + half_diag + jit_mm + c.margin_mm + 1e-6
        cand = np.flatnonzero(sel)
        if cand.size == 0:
            return None
        others = [(np.asarray(q.centre_world_mm), q.max_extent_mm) for q in placed]
        for _ in range(c.max_placement_tries):
            flat = int(cand[int(rng.integers(cand.size))])
            ijk = np.array(np.unravel_index(flat, pm.edt.shape)) + np.array(pm.offset)
            c_vox = ijk + jitter
            c_world = vol.voxel_to_world(c_vox)[0]
            if any(np.linalg.norm(c_world - oc) < extent + oe + c.margin_mm for oc, oe in others):
                continue
            rot_final = rot
            if p.juxtapleural:
                rot_final = _juxtapleural_rotation(g, rot, u_far, c_vox, vol, lung_mask, lo_clear, hi_clear)
                if rot_final is None:
                    continue
            if self._parenchyma_ok(vol, lung_mask, c_vox, extent):
                return ijk, rot_final
        return None

    def _parenchyma_ok(self, vol: CTVolume, lung_mask: np.ndarray, c_vox: np.ndarray, extent: float) -> bool:
        """At least ``parenchyma_min_fraction`` of the lung voxels within the nodule's extent are below −500 HU."""
        sl, start = _box_slices(vol, c_vox, extent)
        hu = vol.hu[sl]
        # Lung voxels only: a juxtapleural nodule's extent ball may reach past the pleura into the chest wall.
        ball = (_dist2_grid(vol.affine, hu.shape, start, c_vox) <= extent * extent) & lung_mask[sl]
        if not ball.any():
            return True
        return float((hu[ball] < PARENCHYMA_HU).mean()) >= self.config.parenchyma_min_fraction


def _juxtapleural_rotation(
    g: _Geometry,
    rot: np.ndarray,
    u_far: np.ndarray,
    c_vox: np.ndarray,
    vol: CTVolume,
    lung_mask: np.ndarray,
    lo_clear: float,
    hi_clear: float,
) -> np.ndarray | None:
    """Rotation pointing the farthest point at the nearest non-lung voxel, if that voxel's distance is in
    [lo_clear, hi_clear] and no cell the rotated nodule may touch is outside the lung (or the grid); else None."""
    half_diag = _half_diagonal(vol.affine)
    reach = max(hi_clear, g.max_extent + half_diag) + float(vol.spacing.max())
    lo, hi = _box_bounds(vol, c_vox, reach)
    if (lo < 0).any() or (hi > np.array(vol.shape)).any():
        return None  # too close to the scan's edge to check exactly
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    outside = np.argwhere(~lung_mask[sl]) + lo
    if not len(outside):
        return None
    w = vol.voxel_to_world(outside)
    c_world = vol.voxel_to_world(c_vox)[0]
    dist = np.linalg.norm(w - c_world, axis=1)
    k = int(np.argmin(dist))
    if not lo_clear <= dist[k] <= hi_clear:
        return None
    rot_final = _align(rot @ u_far, (w[k] - c_world) / dist[k]) @ rot
    close = outside[dist <= g.max_extent + half_diag + 1e-6]
    if len(close) and _cell_bounds(g, rot_final, c_vox, vol, close)[1].any():
        return None
    return rot_final


def _align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrix turning unit vector a onto unit vector b (the minimal rotation; any 180° turn if opposite)."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    cos = float(a @ b)
    if cos < -1.0 + 1e-9:
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + cos)


def _lobe_and_side(
    ijk: np.ndarray, c_world: np.ndarray, lobes: np.ndarray | None, pm: PlacementMap
) -> tuple[str | None, str]:
    """Lobe name at the centre voxel (if a lobe map is given) and the body side."""
    if lobes is not None:
        lab = int(lobes[tuple(int(x) for x in ijk)])
        if lab in LOBE_NAMES:
            return LOBE_NAMES[lab], LOBE_SIDES[lab]
    # RAS+: world x increases toward the patient's right.
    return None, "right" if c_world[0] > pm.midline_x else "left"


def _zone(z: float, extent: tuple[float, float] | None) -> str | None:
    """upper / middle / lower third of a lung's head-foot extent (None when the extent is unknown)."""
    if extent is None or extent[1] <= extent[0]:
        return None
    frac = (z - extent[0]) / (extent[1] - extent[0])  # 0 at the base, 1 at the apex
    return "upper" if frac >= 2 / 3 else ("lower" if frac < 1 / 3 else "middle")


# --------------------------------------------------------------------------------------------------------------------
# Insertion
# --------------------------------------------------------------------------------------------------------------------


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
            "box_world_mm": _plain(self.box_world_mm),
            "local_lung_mean_hu": float(self.local_lung_mean_hu),
        }


def _nan_to_none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _box_bounds(vol: CTVolume, c_vox: np.ndarray, radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Unclipped [lo, hi) index box holding every voxel whose cell can meet the ball (centre c_vox, radius_mm)."""
    inv = np.linalg.inv(vol.affine[:3, :3])
    half = radius_mm * np.linalg.norm(inv, axis=1) + 0.5  # ball's extent along each index axis (+ half a cell)
    return np.floor(c_vox - half).astype(int), np.ceil(c_vox + half).astype(int) + 1


def _box_slices(vol: CTVolume, c_vox: np.ndarray, radius_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """The same box clipped to the grid, as slices and its start index."""
    lo, hi = _box_bounds(vol, c_vox, radius_mm)
    lo = np.maximum(lo, 0)
    hi = np.maximum(np.minimum(hi, np.array(vol.shape)), lo)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), lo


def _dist2_grid(affine: np.ndarray, shape: tuple[int, ...], start: np.ndarray, c_vox: np.ndarray) -> np.ndarray:
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


def _subsample_offsets(spacing: np.ndarray, supersample: int) -> np.ndarray:
    """(S, 3) sub-voxel offsets (voxel units) of a regular grid; coarser axes get proportionally more samples."""
    n = np.maximum(1, np.ceil(supersample * spacing / spacing.min() - 1e-6)).astype(int)
    axes = [(np.arange(k) + 0.5) / k - 0.5 for k in n]
    g = np.meshgrid(*axes, indexing="ij")
    return np.stack([x.ravel() for x in g], axis=1)


def _cell_bounds(
    g: _Geometry, rot: np.ndarray, c_vox: np.ndarray, vol: CTVolume, ijk: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classify whole voxel cells (indices (V, 3)) by rigorous bounds.

    Returns (local-frame centres (V, 3), may touch the nodule (V,), surely inside the body (V,), surely inside the
    part-solid core (V,)). Over a cell (every point within half_diag of its centre) the ellipsoidal radius rho moves
    by at most half_diag / min(semi), and the lobulation limit 1 + f(u) by at most L_f × (angle the cell subtends),
    where L_f = sum |c_k| m_k bounds f's angular slope (d/dθ cos(mθ) ≤ m).
    """
    M = rot.T @ vol.affine[:3, :3]  # voxel-index displacement → local-frame mm
    half_diag = _half_diagonal(vol.affine)
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


def nodule_occupancy(
    params: NoduleParams, vol: CTVolume, supersample: int = 4
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Partial-volume occupancy of a nodule on the CT grid, on a grid-clipped sub-box.

    Cells decided by bounds are set directly; the rest (the rim and the spicules) are averaged over a regular
    sub-voxel grid (``supersample`` per axis at the finest spacing, proportionally more along coarser axes).

    Returns:
        (occupancy float32, core occupancy float32 or None, start index (3,) of the box).
    """
    g = _Geometry.of(params)
    rot = np.asarray(params.rotation, dtype=np.float64)
    c_vox = np.asarray(params.centre_voxel, dtype=np.float64)
    sl, start = _box_slices(vol, c_vox, g.max_extent)
    shape = tuple(s.stop - s.start for s in sl)
    occ = np.zeros(shape, dtype=np.float32)
    core = np.zeros(shape, dtype=np.float32) if g.core_fraction is not None else None
    if occ.size == 0:
        return occ, core, start
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    centres, near, full, full_core = _cell_bounds(g, rot, c_vox, vol, idx + start)
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
    g = _Geometry.of(params)
    c_vox = np.asarray(params.centre_voxel, dtype=np.float64)
    inner = g.body_max + _half_diagonal(vol.affine)
    sl, start = _box_slices(vol, c_vox, inner + SHELL_MM)
    sub = hu[sl]
    d2 = _dist2_grid(vol.affine, sub.shape, start, c_vox)
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


def nodule_surface_points(params: NoduleParams, n: int = 512, include_spicules: bool = True) -> np.ndarray:
    """(N, 3) world-mm points on the nodule's outer surface: ``n`` body points plus, per spicule, its tip and rings
    on its cone beyond the body surface (the renderer cross-checks 2D boxes with their projections)."""
    g = _Geometry.of(params)
    rot = np.asarray(params.rotation, dtype=np.float64)
    c = np.asarray(params.centre_world_mm, dtype=np.float64)
    u = _fibonacci_sphere(n)
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
