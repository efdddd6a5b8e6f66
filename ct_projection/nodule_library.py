"""Real CT nodules from a library of patches (NODE21 generation-baseline format), inserted into the host CT.

A library folder holds pairs ``<uid>_dcm_<k>.mha`` (HU patch, any spacing) and ``<uid>_seg_<k>.mha`` (the nodule's
0/1 mask on the same grid), e.g. the 251 LUNA16/LIDC nodules cut by the NODE21 organisers.

As for parametric nodules, everything random is drawn first (:meth:`LibrarySampler.get_params`: which patch, scale,
rotation, flips, position) into plain :class:`LibraryNoduleParams`, then :func:`library_deltas` inserts them
deterministically. Insertion resamples the patch straight onto the host grid (rotation, flip and scale folded into
one trilinear resampling, averaged over sub-samples along coarse host axes), and adds the patch's contrast over its
own lung background, ``ΔHU = w · (patch − background)``, where the weight ``w`` is the nodule mask dilated by
``dilate_mm`` with a linear edge of ``edge_mm`` (so the nodule and the vessels or pleura attached to it come in,
and the host's lung texture and noise stay). Where ``w = 0`` the host HU is untouched. Each nodule is placed by the
parametric sampler's rules (:meth:`NoduleSampler._place`) for a ball that holds its whole blend region.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ct_projection.nodules import NodulePlacementError, NodulePlacementWarning, NoduleParams, NoduleSampler
from ct_projection.nodules.config import PARENCHYMA_HU
from ct_projection.nodules.placement import _lobe_and_side, _zone
from ct_projection.volume import CTVolume

_PAIR = re.compile(r"^(?P<uid>.+)_dcm_(?P<k>\d+)\.mha$")


class NoduleLibraryError(ValueError):
    """A library folder or patch that cannot be used; str is one line naming it."""


@dataclass(frozen=True)
class LibraryConfig:
    """How library nodules are drawn and blended.

    Args:
        fraction: probability that a nodule comes from the library (the rest are parametric).
        scale_range: limited isotropic scale change applied to a patch.
        dilate_mm: the blend weight is 1 up to this distance outside the nodule mask (attached structure).
        edge_mm: then falls linearly to 0 over this distance (no visible seam).
    """

    fraction: float = 1.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    dilate_mm: float = 1.5
    edge_mm: float = 2.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise NoduleLibraryError(f"--library-fraction: must be in [0, 1], got {self.fraction}")
        lo, hi = self.scale_range
        if not 0.5 <= lo <= hi <= 2.0:
            raise NoduleLibraryError(f"library scale_range must satisfy 0.5 <= min <= max <= 2, got {self.scale_range}")
        if self.dilate_mm < 0 or self.edge_mm <= 0:
            raise NoduleLibraryError("library dilate_mm must be >= 0 and edge_mm > 0")


@dataclass(frozen=True)
class Patch:
    """One library nodule, resident in memory: HU, mask and blend weight on the patch grid (x, y, z order)."""

    patch_id: str  # sha256 of the patch file (first 16 hex): identifies it without the source scan's UID
    hu: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    spacing: np.ndarray  # (3,) mm
    centroid: np.ndarray  # (3,) mask centroid, patch voxel index
    background_hu: float  # mean HU of the patch's aerated lung outside the blend region
    mean_hu: float  # mean HU inside the mask
    volume_mm3: float
    diameter_mm: float  # equivalent-sphere diameter of the mask
    extent_mm: float  # farthest blend-region voxel from the centroid
    surface_local_mm: np.ndarray  # (N, 3) mask boundary voxel centres relative to the centroid, mm


def _read_mha(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array in (x, y, z) order and its spacing; one-line NoduleLibraryError when unreadable."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise NoduleLibraryError(f"{path}: cannot read as an image ({' '.join(str(err).split())[:120]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NoduleLibraryError(f"{path}: expected a 3-D single-channel image")
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), np.asarray(image.GetSpacing(), dtype=np.float64)


def _mask_stats(mask: np.ndarray, spacing: np.ndarray, config: LibraryConfig) -> tuple[np.ndarray, float, float, float]:
    """Centroid (index), volume (mm³), equivalent-sphere diameter and blend extent (mm) of a nodule mask."""
    idx = np.argwhere(mask).astype(np.float64)
    centroid = idx.mean(axis=0)
    reach = float(np.linalg.norm((idx - centroid) * spacing, axis=1).max())
    extent = reach + 0.5 * float(np.linalg.norm(spacing)) + config.dilate_mm + config.edge_mm
    volume = float(mask.sum() * np.prod(spacing))
    return centroid, volume, float((6.0 * volume / math.pi) ** (1.0 / 3.0)), extent


def load_patch(hu_path: Path, seg_path: Path, config: LibraryConfig) -> Patch:
    """Read one patch pair and precompute its blend weight and statistics."""
    hu, spacing = _read_mha(hu_path)
    seg, seg_spacing = _read_mha(seg_path)
    if hu.shape != seg.shape or not np.allclose(spacing, seg_spacing, rtol=1e-4):
        raise NoduleLibraryError(f"{seg_path}: mask grid {seg.shape} does not match its patch {hu.shape}")
    mask = seg > 0
    if not mask.any():
        raise NoduleLibraryError(f"{seg_path}: empty nodule mask")
    hu = hu.astype(np.float32)
    # Distance (mm) outside the mask → weight 1 up to dilate_mm, linear to 0 at dilate_mm + edge_mm.
    dist = ndimage.distance_transform_edt(~mask, sampling=spacing)
    weight = np.clip((config.dilate_mm + config.edge_mm - dist) / config.edge_mm, 0.0, 1.0).astype(np.float32)
    outside = (weight == 0) & (hu < PARENCHYMA_HU)
    background = float(hu[outside].mean()) if outside.sum() >= 20 else -850.0
    centroid, volume, diameter, extent = _mask_stats(mask, spacing, config)
    boundary = mask & ~ndimage.binary_erosion(mask)
    return Patch(
        patch_id=hashlib.sha256(hu_path.read_bytes()).hexdigest()[:16],
        hu=hu,
        mask=mask,
        weight=weight,
        spacing=spacing,
        centroid=centroid,
        background_hu=background,
        mean_hu=float(hu[mask].mean()),
        volume_mm3=volume,
        diameter_mm=diameter,
        extent_mm=extent,
        surface_local_mm=(np.argwhere(boundary).astype(np.float64) - centroid) * spacing,
    )


class NoduleLibrary:
    """A folder of patch pairs; patches load on first use and stay cached.

    Args:
        folder: the library folder.
        config: blend settings (they shape each patch's weight).
    """

    def __init__(self, folder: str | Path, config: LibraryConfig | None = None) -> None:
        self.folder = Path(folder)
        self.config = config or LibraryConfig()
        if not self.folder.is_dir():
            raise NoduleLibraryError(f"{self.folder}: --nodule-library is not a folder")
        pairs = []
        for path in sorted(self.folder.rglob("*_dcm_*.mha")):
            m = _PAIR.match(path.name)
            if m is None:
                continue
            seg = path.with_name(f"{m['uid']}_seg_{m['k']}.mha")
            if not seg.is_file():
                raise NoduleLibraryError(f"{path}: no mask {seg.name} beside it")
            pairs.append((path, seg))
        if not pairs:
            raise NoduleLibraryError(
                f"{self.folder}: no nodule patches (expected <uid>_dcm_<k>.mha with <uid>_seg_<k>.mha beside it)"
            )
        self.pairs = pairs
        self._load = lru_cache(maxsize=64)(self._load_uncached)  # ~1 MB per 50³ patch
        self._sizes: dict[int, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def _load_uncached(self, index: int) -> Patch:
        return load_patch(*self.pairs[index], self.config)

    def size(self, index: int) -> tuple[float, float]:
        """(equivalent-sphere diameter, blend extent) in mm of patch ``index``, from its mask only (cached)."""
        if index not in self._sizes:
            seg, spacing = _read_mha(self.pairs[index][1])
            if not (seg > 0).any():
                raise NoduleLibraryError(f"{self.pairs[index][1]}: empty nodule mask")
            _, _, diameter, extent = _mask_stats(seg > 0, spacing, self.config)
            self._sizes[index] = (diameter, extent)
        return self._sizes[index]

    def patch(self, index: int) -> Patch:
        """Patch ``index`` (sorted by file name)."""
        return self._load(index)

    def digest(self) -> str:
        """sha256 over every patch file's name and bytes: the library's identity in run settings (not its path)."""
        h = hashlib.sha256()
        for hu_path, seg_path in self.pairs:
            for path in (hu_path, seg_path):
                h.update(path.name.encode())
                h.update(path.read_bytes())
        return h.hexdigest()


@dataclass
class LibraryNoduleParams:
    """Everything drawn for one library nodule (plain types; ``to_dict`` is the label metadata).

    ``rotation`` maps the patch's (flipped, scaled) axes to world; ``flip`` mirrors patch axes before it.
    """

    patch_index: int
    patch_id: str
    source_diameter_mm: float
    source_spacing_mm: list[float]
    scale: float
    rotation: list[list[float]]
    flip: list[bool]
    centre_world_mm: list[float]
    centre_voxel: list[float]
    extent_mm: float
    juxtapleural: bool = False
    lobe: str | None = None
    side: str | None = None
    zone: str | None = None
    seed: int | None = None
    source: str = "library"

    @property
    def diameter_mm(self) -> float:
        """Equivalent-sphere diameter after scaling."""
        return self.source_diameter_mm * self.scale

    @property
    def max_extent_mm(self) -> float:
        """Radius of the ball that holds the whole blend region (what placement keeps clear)."""
        return self.extent_mm

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every drawn value (plus the scaled diameter and the rotation as a rotation vector)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["diameter_mm"] = round(self.diameter_mm, 4)
        out["max_extent_mm"] = self.extent_mm
        out["rotation_vector_deg"] = [
            round(float(v), 3) for v in Rotation.from_matrix(np.asarray(self.rotation)).as_rotvec(degrees=True)
        ]
        return out


class LibrarySampler:
    """Draws a mix of library and parametric nodules for one CT, sharing the parametric placement rules.

    Args:
        sampler: the parametric sampler (its config gives count, juxtapleural probability, margins; it places both).
        library: the patches.
    """

    def __init__(self, sampler: NoduleSampler, library: NoduleLibrary) -> None:
        self.sampler = sampler
        self.library = library

    def prepare(self, vol: CTVolume, lung_mask: np.ndarray) -> Any:
        """The parametric sampler's per-CT placement maps."""
        return self.sampler.prepare(vol, lung_mask)

    def get_params(
        self, rng: np.random.Generator, vol: CTVolume, lung_mask: np.ndarray, lobes: np.ndarray | None = None
    ) -> list[NoduleParams | LibraryNoduleParams]:
        """Draw the count, then per nodule (own child generator) library-or-parametric and all its values."""
        c = self.sampler.config
        lung_mask = np.asarray(lung_mask, dtype=bool)
        pm = self.sampler.prepare(vol, lung_mask)
        count = int(rng.integers(c.count_range[0], c.count_range[1] + 1))
        seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=count)]
        placed: list[Any] = []
        for i, seed in enumerate(seeds):
            child = np.random.default_rng(seed)
            if child.random() < self.library.config.fraction:
                p: Any = self._sample_library(child, seed, vol, lung_mask, lobes, pm, placed)
            else:
                p = self.sampler._sample_one(child, seed, vol, lung_mask, lobes, pm, placed)
            if p is not None:
                placed.append(p)
                continue
            msg = f"nodule {i + 1}/{count}: no position inside the lung fits it"
            if c.on_failure == "raise":
                raise NodulePlacementError(msg)
            warnings.warn(msg + "; skipped", NodulePlacementWarning, stacklevel=2)
        return placed

    def _candidates(self, upper_extent: float | None) -> list[int]:
        """Patches whose scaled size can meet the configured diameter range (all when none can)."""
        lo, hi = self.sampler.config.diameter_range_mm
        s_lo, s_hi = self.library.config.scale_range
        out = []
        for i in range(len(self.library)):
            diameter, extent = self.library.size(i)
            if diameter * s_hi >= lo and diameter * s_lo <= hi:
                if upper_extent is None or extent * s_lo < upper_extent:
                    out.append(i)
        return out or list(range(len(self.library)))

    def _sample_library(
        self,
        rng: np.random.Generator,
        seed: int,
        vol: CTVolume,
        lung_mask: np.ndarray,
        lobes: np.ndarray | None,
        pm: Any,
        placed: list[Any],
    ) -> LibraryNoduleParams | None:
        """Draw patch, scale, rotation, flips and a position; a smaller patch on failure (max_size_retries times)."""
        c = self.sampler.config
        lo, hi = c.diameter_range_mm
        s_lo, s_hi = self.library.config.scale_range
        upper: float | None = None
        for _ in range(c.max_size_retries + 1):
            choices = self._candidates(upper)
            index = int(choices[int(rng.integers(len(choices)))])
            patch = self.library.patch(index)
            # Scale within the limits, and toward the configured diameter range when the patch lies outside it.
            a, b = max(s_lo, lo / patch.diameter_mm), min(s_hi, hi / patch.diameter_mm)
            scale = float(rng.uniform(a, b)) if a <= b else (s_lo if patch.diameter_mm * s_lo > hi else s_hi)
            rotation = Rotation.random(random_state=rng).as_matrix()
            flip = [bool(v) for v in rng.random(3) < 0.5]
            juxta = bool(rng.random() < c.juxtapleural_prob)
            jitter = rng.uniform(-0.5, 0.5, size=3)
            extent = patch.extent_mm * scale
            # Placement sees a ball holding the whole blend region: same rules as a parametric nodule of that size.
            proxy = NoduleParams(
                centre_world_mm=[0.0] * 3, centre_voxel=[0.0] * 3, diameter_mm=2 * extent, axes_mm=[2 * extent] * 3,
                rotation=np.eye(3).tolist(), juxtapleural=juxta,
            )  # fmt: skip
            found = self.sampler._place(rng, proxy, jitter, vol, lung_mask, pm, placed)
            if found is None:
                upper = 0.8 * extent
                continue
            ijk = found[0]
            c_vox = ijk + jitter
            c_world = vol.voxel_to_world(c_vox)[0]
            lobe, side = _lobe_and_side(ijk, c_world, lobes, pm)
            return LibraryNoduleParams(
                patch_index=index,
                patch_id=patch.patch_id,
                source_diameter_mm=round(patch.diameter_mm, 4),
                source_spacing_mm=[float(v) for v in patch.spacing],
                scale=scale,
                rotation=rotation.tolist(),
                flip=flip,
                centre_world_mm=[float(v) for v in c_world],
                centre_voxel=[float(v) for v in c_vox],
                extent_mm=float(extent),
                juxtapleural=juxta,
                lobe=lobe,
                side=side,
                zone=_zone(float(c_world[2]), pm.lung_z.get(side)),
                seed=seed,
            )
        return None


@dataclass
class LibraryInsertion:
    """One library nodule as inserted (the same fields the labels use from a parametric ``InsertedNodule``)."""

    params: LibraryNoduleParams
    offset: tuple[int, int, int]
    delta_hu: np.ndarray
    occupancy: np.ndarray  # resampled nodule mask in [0, 1]
    weight: np.ndarray  # resampled blend weight in [0, 1]
    mean_hu: float  # the patch's own mean HU inside its mask
    mean_hu_partial_volume: float  # occupancy-weighted mean of the new host HU
    core_mean_hu: float
    volume_mm3: float
    diameter_measured_mm: float
    box_world_mm: list[list[float]]
    local_lung_mean_hu: float  # the patch's lung background (what its contrast is measured against)
    contrast_hu: float  # mean HU inside the mask minus that background
    surface_world_mm: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3)))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index of the sub-box in the parent grid."""
        return tuple(slice(o, o + s) for o, s in zip(self.offset, self.delta_hu.shape))  # type: ignore[return-value]

    def facts(self) -> dict[str, Any]:
        """Label metadata of the insertion (params and measured statistics)."""
        return {
            **self.params.to_dict(),
            "mean_hu": round(self.mean_hu, 2),
            "mean_hu_partial_volume": round(self.mean_hu_partial_volume, 2),
            "core_mean_hu": None if not math.isfinite(self.core_mean_hu) else round(self.core_mean_hu, 2),
            "local_lung_mean_hu": round(self.local_lung_mean_hu, 2),
            "volume_mm3": round(self.volume_mm3, 3),
            "diameter_measured_mm": round(self.diameter_measured_mm, 3),
        }


def _patch_matrix(p: LibraryNoduleParams, patch: Patch) -> np.ndarray:
    """3x3 map from world displacement (mm) to patch voxel-index displacement: inverse of scale·R·flip·spacing."""
    flip = np.diag([-1.0 if f else 1.0 for f in p.flip])
    forward = p.scale * np.asarray(p.rotation) @ flip @ np.diag(patch.spacing)
    return np.linalg.inv(forward)


def library_deltas(vol: CTVolume, params: list[LibraryNoduleParams], library: NoduleLibrary) -> list[LibraryInsertion]:
    """Each library nodule's ΔHU sub-box on the host grid and its statistics; deterministic."""
    out = []
    inv_affine = np.linalg.inv(vol.affine[:3, :3])
    voxel_mm3 = float(abs(np.linalg.det(vol.affine[:3, :3])))
    for p in params:
        patch = library.patch(p.patch_index)
        c_vox = np.asarray(p.centre_voxel, dtype=np.float64)
        half = p.extent_mm * np.linalg.norm(inv_affine, axis=1) + 1.0
        lo = np.maximum(np.floor(c_vox - half).astype(int), 0)
        hi = np.minimum(np.ceil(c_vox + half).astype(int) + 1, np.array(vol.shape))
        shape = tuple(int(v) for v in hi - lo)
        to_patch = _patch_matrix(p, patch) @ vol.affine[:3, :3]  # host index displacement → patch index displacement
        # Sub-samples along host axes coarser than the (scaled) patch grid, so thin host slices average the patch.
        step = np.abs(to_patch).sum(axis=0)  # patch voxels crossed per host voxel step, per host axis
        n = np.maximum(1, np.ceil(step - 1e-6)).astype(int)
        offs = np.stack(np.meshgrid(*[(np.arange(k) + 0.5) / k - 0.5 for k in n], indexing="ij"), -1).reshape(-1, 3)
        grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1).reshape(-1, 3)
        rel = grid + lo - c_vox
        acc = {"hu": 0.0, "mask": 0.0, "weight": 0.0}
        for off in offs:
            coords = ((rel + off) @ to_patch.T + patch.centroid).T
            for key, arr, fill in (("hu", patch.hu, patch.background_hu), ("mask", patch.mask, 0.0),
                                   ("weight", patch.weight, 0.0)):  # fmt: skip
                acc[key] = acc[key] + ndimage.map_coordinates(
                    arr.astype(np.float32), coords, order=1, mode="constant", cval=fill
                )
        hu = (acc["hu"] / len(offs)).reshape(shape)
        occ = (acc["mask"] / len(offs)).reshape(shape).astype(np.float32)
        weight = (acc["weight"] / len(offs)).reshape(shape).astype(np.float32)
        delta = (weight * (hu - patch.background_hu)).astype(np.float32)
        # Trim to the voxels the blend touches.
        nz = np.nonzero(weight > 0)
        tlo = np.array([a.min() for a in nz]) if nz[0].size else np.zeros(3, int)
        thi = np.array([a.max() + 1 for a in nz]) if nz[0].size else np.zeros(3, int)
        tsl = tuple(slice(a, b) for a, b in zip(tlo, thi))
        delta, occ, weight = delta[tsl], occ[tsl], weight[tsl]
        offset = tuple(int(v) for v in lo + tlo)
        gsl = tuple(slice(o, o + s) for o, s in zip(offset, delta.shape))
        new = vol.hu[gsl].astype(np.float64) + delta
        w = occ.astype(np.float64)
        vol_mm3 = float(w.sum() * voxel_mm3)
        corners = np.array(offset, dtype=np.float64) - 0.5 + np.array(
            [[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64
        ) * np.array(delta.shape)
        flip = np.diag([-1.0 if f else 1.0 for f in p.flip])
        surface = patch.surface_local_mm @ (p.scale * np.asarray(p.rotation) @ flip).T + np.asarray(p.centre_world_mm)
        out.append(
            LibraryInsertion(
                params=p,
                offset=offset,  # type: ignore[arg-type]
                delta_hu=delta,
                occupancy=occ,
                weight=weight,
                mean_hu=patch.mean_hu,
                mean_hu_partial_volume=float((new * w).sum() / w.sum()) if w.sum() > 0 else float("nan"),
                core_mean_hu=float(new[occ > 0.99].mean()) if (occ > 0.99).any() else float("nan"),
                volume_mm3=vol_mm3,
                diameter_measured_mm=float((6.0 * vol_mm3 / math.pi) ** (1.0 / 3.0)),
                box_world_mm=[list(map(float, vol.voxel_to_world(corners).min(0))),
                              list(map(float, vol.voxel_to_world(corners).max(0)))],  # fmt: skip
                local_lung_mean_hu=patch.background_hu,
                contrast_hu=patch.mean_hu - patch.background_hu,
                surface_world_mm=surface,
            )
        )
    return out


def insert_mixed(
    vol: CTVolume, params: list[Any], library: NoduleLibrary | None, supersample: int
) -> list[Any]:
    """ΔHU of a mixed parameter list in its order: parametric ones by ``nodule_deltas``, library ones here."""
    from ct_projection.nodules.insertion import nodule_deltas

    parametric = [p for p in params if not isinstance(p, LibraryNoduleParams)]
    from_library = [p for p in params if isinstance(p, LibraryNoduleParams)]
    if from_library and library is None:
        raise ValueError("library nodule parameters need the nodule library they were drawn from")
    a = iter(nodule_deltas(vol, parametric, supersample=supersample))
    b = iter(library_deltas(vol, from_library, library) if from_library else [])
    return [next(b) if isinstance(p, LibraryNoduleParams) else next(a) for p in params]


def library_digest(folder: str | Path) -> str:
    """sha256 of a library folder's patch files (cached per folder and modification times)."""
    lib = NoduleLibrary(folder)
    key = (str(Path(folder).resolve()), tuple((str(a), a.stat().st_mtime_ns, b.stat().st_mtime_ns) for a, b in lib.pairs))
    if key not in _DIGESTS:
        _DIGESTS[key] = lib.digest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple, str] = {}
