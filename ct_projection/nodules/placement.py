"""Nodule placement: :class:`NoduleSampler` draws every nodule's parameters and position, :class:`PlacementMap`.

Follows the torchio/MONAI random-transform pattern: :meth:`NoduleSampler.get_params` draws everything (count, size,
type, HU, shape, orientation, lobulation, spicules, position) from a ``numpy.random.Generator`` and returns plain
:class:`NoduleParams` records that ``ct_projection.nodules.insertion`` applies with no randomness.

Placement, all decided from distance maps computed once per CT (:meth:`NoduleSampler.prepare`) and thresholded with
``np.flatnonzero``:
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
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from scipy.special import ndtr, ndtri

from ct_projection.nodules.config import PARENCHYMA_HU, NoduleConfig, NodulePlacementError, NodulePlacementWarning
from ct_projection.nodules.insertion import InsertedNodule, insert_nodules
from ct_projection.nodules.shape import (
    NoduleParams,
    NoduleShape,
    box_bounds,
    box_slices,
    cell_bounds,
    dist2_grid,
    half_diagonal,
)
from ct_projection.volume import CTVolume

# TotalSegmentator lobe ids.
LOBE_NAMES: dict[int, str] = {
    10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left",
    12: "lung_upper_lobe_right",
    13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right",
}
LOBE_SIDES: dict[int, str] = {10: "left", 11: "left", 12: "right", 13: "right", 14: "right"}


def _random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) directions uniform on the sphere."""
    v = rng.normal(size=(n, 3))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix (scipy's ``Rotation.random``: a normalised Gaussian quaternion)."""
    return Rotation.random(rng=rng).as_matrix()


def _categorical(rng: np.random.Generator, probs: dict[str, float]) -> str:
    """Draw a key with the given (unnormalised) probabilities, iterating in the dict's canonical order."""
    keys = list(probs)
    cdf = np.cumsum([probs[k] for k in keys])
    return keys[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(keys) - 1)]


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
        g = NoduleShape.of(p)
        extent = g.max_extent
        rot = np.asarray(p.rotation, dtype=np.float64)
        # A non-lung voxel's cell can be touched only if its centre is within extent + half-diagonal of the nodule
        # centre; the maps are measured from the unjittered voxel centre, hence the jitter term.
        half_diag = half_diagonal(vol.affine)
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
        sl, start = box_slices(vol, c_vox, extent)
        hu = vol.hu[sl]
        # Lung voxels only: a juxtapleural nodule's extent ball may reach past the pleura into the chest wall.
        ball = (dist2_grid(vol.affine, hu.shape, start, c_vox) <= extent * extent) & lung_mask[sl]
        if not ball.any():
            return True
        return float((hu[ball] < PARENCHYMA_HU).mean()) >= self.config.parenchyma_min_fraction


def _juxtapleural_rotation(
    g: NoduleShape,
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
    half_diag = half_diagonal(vol.affine)
    reach = max(hi_clear, g.max_extent + half_diag) + float(vol.spacing.max())
    lo, hi = box_bounds(vol, c_vox, reach)
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
    if len(close) and cell_bounds(g, rot_final, c_vox, vol, close)[1].any():
        return None
    return rot_final


def _align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrix turning vector a onto vector b (scipy's minimal rotation; a 180° turn if opposite)."""
    rotation, _ = Rotation.align_vectors(np.asarray(b, dtype=np.float64)[None], np.asarray(a, dtype=np.float64)[None])
    return rotation.as_matrix()


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
