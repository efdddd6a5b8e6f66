"""The renderer interface shared by the DiffDRR (exact Siddon) and nanodrr (trilinear ray marching) backends.

A renderer holds one CT, prepared once: cropped on all three axes to the patient's body, everything outside the body
zeroed, and turned into a stack of ``C`` per-channel volumes (``C = 1``: linear attenuation μ; a polychromatic model
passes per-material densities). Per pose it returns line integrals — ``render`` (one image), ``render_channels``
(``C`` images from one pass over the rays) — and, for labels, ``render_window``: the line integrals of a small
sub-volume on the CT grid (e.g. a nodule's ΔHU or per-material Δdensity) over a detector window only. ``project``
maps world points to detector pixels.

Both backends share everything but the ray integral: DiffDRR's detector and pose conventions (so images, windows and
projected points agree by construction), the ray/volume box test (rays that miss the volume are not traced) and the
volume layout. A backend implements ``_trace(volume, source, target)``: the ``(C, N)`` line integrals of ``N`` rays
given in the volume's voxel coordinates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np
import torch

from ct_projection.attenuation import AttenuationModel
from ct_projection.body import BodyMask, body_mask, bounding_slices
from ct_projection.geometry import Pose, ProjectionGeometry
from ct_projection.volume import CTVolume

if TYPE_CHECKING:
    from diffdrr.pose import RigidTransform

RENDERERS = ("diffdrr", "nanodrr")
DEFAULT_RENDERER = "diffdrr"

# HU (cropped sub-grid, float32) → (C, ...) per-channel volumes on the same grid; line integrals of each are rendered.
DensityFn = Callable[[np.ndarray], np.ndarray]


def pick_device(device: str | None = None) -> torch.device:
    """``cuda`` when available unless told otherwise; ``cpu`` elsewhere; an unusable choice is a one-line ValueError."""
    allowed = "expected one of auto, cpu, cuda, cuda:N"
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    index = device[5:] if device.startswith("cuda:") else None
    if device != "cuda" and not (index and index.isdigit()):
        raise ValueError(f"unknown device {device!r}: {allowed}")
    # Checked here, before any work, instead of failing deep inside torch half-way through a run.
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is available on this machine ({allowed}; try cpu)")
    if index is not None and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device {device!r}: only {count} CUDA device(s) available (cuda:0 to cuda:{count - 1})")
    return torch.device(device)


@dataclass(frozen=True)
class Window:
    """A detector sub-window: rows [r0, r1) and columns [c0, c1)."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return (self.r1 - self.r0, self.c1 - self.c0)


# DiffDRR 0.6.1's frame-of-reference changes (``diffdrr.data.read``): its detector conventions, shared by both backends.
_REORIENT = {
    "AP": torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float32),
    "PA": torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float32),
}


class Renderer(ABC):
    """One CT under one acquisition geometry; see the module docstring.

    Args:
        vol: the CT (HU, RAS+ affine).
        geometry: acquisition geometry.
        attenuation: HU → μ model (used when ``densities`` is None, and by ``render_delta``).
        isocentre_world: RAS mm point placed at the isocentre (default: volume centre).
        device: ``auto``/``cpu``/``cuda``.
        rays_per_chunk: most rays traced at once (bounds peak memory).
        body_only: zero the volume outside the patient's body (no CT table, no air noise) and crop to the body.
        body: the CT's body mask when already computed (one per CT, shared with the lung segmentation).
        densities: HU → ``(C, ...)`` volumes to integrate, called once on the cropped grid; default ``μ`` (C = 1).
    """

    name: ClassVar[str]

    def __init__(
        self,
        vol: CTVolume,
        geometry: ProjectionGeometry,
        attenuation: AttenuationModel | None = None,
        isocentre_world: np.ndarray | None = None,
        device: str | None = None,
        rays_per_chunk: int | None = None,
        body_only: bool = True,
        body: BodyMask | None = None,
        densities: DensityFn | None = None,
    ) -> None:
        from diffdrr.detector import Detector

        self.geometry = geometry
        self.attenuation = attenuation or AttenuationModel()
        self.device = pick_device(device)
        self.isocentre_world = np.asarray(
            vol.center_world() if isocentre_world is None else isocentre_world, dtype=np.float64
        )
        # World frame of the renderer: the CT's RAS frame shifted so the isocentre is the origin.
        self.affine = vol.affine.copy()
        self.affine[:3, 3] -= self.isocentre_world
        self.rays_per_chunk = int(rays_per_chunk or (65536 if self.device.type == "cuda" else 16384))
        crop: tuple[slice, ...] = tuple(slice(0, s) for s in vol.shape)
        inside = None
        if body_only:
            body = body if body is not None and body.shape == vol.shape else body_mask(vol.hu, vol.spacing)
            inside = body.full()
            crop = bounding_slices(inside)
        hu = vol.hu[crop]
        stack = self.attenuation.mu(hu)[None] if densities is None else np.asarray(densities(hu), dtype=np.float32)
        if stack.ndim != 4 or stack.shape[1:] != hu.shape:
            raise ValueError(f"densities must return (C, {', '.join(map(str, hu.shape))}) volumes, got {stack.shape}")
        if inside is not None:
            stack = stack * inside[crop][None]
        self.n_channels = int(stack.shape[0])
        self.crop = crop
        self.crop_affine = _shifted(self.affine, [c.start for c in crop])
        self.volume = _to_layout(stack, self.device)
        size = geometry.size_px
        self.detector = Detector(
            geometry.sdd_mm,
            size,
            size,
            geometry.pixel_mm,
            geometry.pixel_mm,
            0.0,
            0.0,
            _REORIENT[geometry.diffdrr_orientation],
            reverse_x_axis=True,  # radiological display: the patient's right on the image's left
        ).to(self.device)
        self._last_projection: tuple[Pose, np.ndarray] | None = None

    # -- geometry --------------------------------------------------------------------------------------------------

    def pose_transform(self, pose: Pose) -> RigidTransform:
        """The DiffDRR ``RigidTransform`` for a pose."""
        from diffdrr.pose import convert

        rot = torch.tensor([pose.rotation_rad], dtype=torch.float32, device=self.device)
        trans = torch.tensor([pose.translation_mm], dtype=torch.float32, device=self.device)
        return convert(rot, trans, parameterization="euler_angles", convention=pose.convention)

    @torch.no_grad()
    def rays(self, pose: Pose, pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Source (1, 1, 3) and detector pixel centres (1, N, 3) in the renderer's world frame (mm).

        Args:
            pose: the pose.
            pixels: flat row-major pixel indices (``row * size + col``) to return; default all, N = H·W.
        """
        if pixels is None:
            return self.detector(self.pose_transform(pose), None)
        # DiffDRR's ``Detector.forward`` on a subset of its pixels (labels trace a few hundred, not H·W).
        det = self.detector
        placed = det.reorient.compose(self.pose_transform(pose))
        return placed(det.source), placed(det.calibration(det.target[:, pixels]))

    def project(self, pose: Pose, points_world: np.ndarray) -> np.ndarray:
        """Project (N, 3) CT-world RAS mm points to (N, 2) detector (x=col, y=row), pixel-edge convention."""
        pts = np.atleast_2d(np.asarray(points_world, dtype=np.float64)) - self.isocentre_world
        x = pts @ self._projection(pose)[:, :3].T + self._projection(pose)[:, 3]
        size = self.geometry.size_px
        # Origin at the upper-left corner, x reversed (radiological display), as DiffDRR's perspective_projection.
        return np.stack([size - x[:, 0] / x[:, 2], size - x[:, 1] / x[:, 2]], axis=1)

    @torch.no_grad()
    def _projection(self, pose: Pose) -> np.ndarray:
        """3x4 matrix of DiffDRR 0.6.1's ``DRR.perspective_projection`` (intrinsic @ world→camera) for ``pose``.

        Kept for the last pose asked (labels project several point sets per pose): a value-keyed cache.
        """
        if self._last_projection is None or self._last_projection[0] != pose:
            extrinsic = self.detector.reorient.compose(self.pose_transform(pose)).inverse().matrix[0, :3]
            matrix = self.detector.intrinsic.double() @ extrinsic.double()
            self._last_projection = (pose, matrix.cpu().numpy())
        return self._last_projection[1]

    def window_for(self, pose: Pose, box_world: np.ndarray, pad_px: int = 2) -> Window | None:
        """Detector window that a world box (2, 3: min/max corners) can reach; None if off the detector."""
        lo, hi = np.asarray(box_world, dtype=np.float64)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        uv = self.project(pose, corners)
        size = self.geometry.size_px
        c0 = max(int(np.floor(uv[:, 0].min())) - pad_px, 0)
        c1 = min(int(np.ceil(uv[:, 0].max())) + pad_px, size)
        r0 = max(int(np.floor(uv[:, 1].min())) - pad_px, 0)
        r1 = min(int(np.ceil(uv[:, 1].max())) + pad_px, size)
        if c0 >= c1 or r0 >= r1:
            return None
        return Window(r0, r1, c0, c1)

    # -- rendering -------------------------------------------------------------------------------------------------

    def render(self, pose: Pose) -> np.ndarray:
        """Line-integral image L (H, W), float32, for the whole detector (single-channel renderers)."""
        if self.n_channels != 1:
            raise ValueError(f"render() needs one channel, this renderer has {self.n_channels}: use render_channels")
        return self.render_channels(pose)[0]

    @torch.no_grad()
    def render_channels(self, pose: Pose) -> np.ndarray:
        """(C, H, W) float32 line integrals of every channel, from one pass over the rays."""
        source, target = self.rays(pose)
        size = self.geometry.size_px
        out = self._integrate(self.volume, self.crop_affine, source, target[0])
        return out.reshape(self.n_channels, size, size).cpu().numpy()

    @torch.no_grad()
    def render_window(self, pose: Pose, densities: np.ndarray, offset_ijk: np.ndarray, window: Window) -> np.ndarray:
        """(C, h, w) line integrals of a sub-volume of the CT grid over a detector window only.

        Args:
            pose: the same pose as the full render.
            densities: (C, a, b, c) values to integrate (e.g. Δμ of a nodule), zero outside the object.
            offset_ijk: index of the sub-box's first voxel in the CT grid.
            window: detector rows/cols to trace.
        """
        stack = np.asarray(densities, dtype=np.float32)
        if stack.ndim != 4:
            raise ValueError(f"render_window needs (C, a, b, c) densities, got shape {stack.shape}")
        size = self.geometry.size_px
        rows = torch.arange(window.r0, window.r1, device=self.device)
        cols = torch.arange(window.c0, window.c1, device=self.device)
        source, target = self.rays(pose, (rows[:, None] * size + cols[None, :]).reshape(-1))
        affine = _shifted(self.affine, offset_ijk)
        out = self._integrate(_to_layout(stack, self.device), affine, source, target[0], fine=True)
        return out.reshape(stack.shape[0], *window.shape).cpu().numpy()

    def render_delta(self, pose: Pose, delta_hu: np.ndarray, offset_ijk: np.ndarray, window: Window) -> np.ndarray:
        """(h, w) line integral of an HU change (new − old) on a sub-box of the CT grid, over a detector window."""
        return self.render_window(pose, self.attenuation.delta_mu(delta_hu)[None], offset_ijk, window)[0]

    def _integrate(
        self, volume: torch.Tensor, affine: np.ndarray, source: torch.Tensor, target: torch.Tensor, fine: bool = False
    ) -> torch.Tensor:
        """(C, N) line integrals of ``volume`` (layout (1, C, K, J, I), voxel→world ``affine``) along N rays.

        Rays are moved into voxel coordinates (i, j, k); the ones that miss the volume's box (grown by one voxel,
        the support of trilinear interpolation) are 0 and are not traced. ``fine``: a small sub-volume (labels),
        where a sampling backend can afford denser samples.
        """
        to_voxel = torch.as_tensor(np.linalg.inv(affine), dtype=torch.float32, device=self.device)
        length = (target - source[0]).norm(dim=-1)  # world mm per unit ray parameter
        src = source[0] @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        tgt = target @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        dims = torch.tensor(volume.shape[2:][::-1], dtype=torch.float32, device=self.device)  # (I, J, K)
        t0, t1 = clip_to_box(src, tgt, -torch.ones_like(dims), dims)
        hit = torch.nonzero(t1 > t0).squeeze(-1)
        out = torch.zeros(volume.shape[1], target.shape[0], dtype=torch.float32, device=self.device)
        if hit.numel():
            out[:, hit] = self._trace(volume, src, tgt[hit], length[hit], fine)
        return out

    @abstractmethod
    def _trace(
        self, volume: torch.Tensor, source: torch.Tensor, target: torch.Tensor, length: torch.Tensor, fine: bool
    ) -> torch.Tensor:
        """(C, M) line integrals along M rays from ``source`` (1, 3) to ``target`` (M, 3), voxel coordinates.

        ``length`` (M,) is each ray's world length in mm (voxel coordinates are anisotropic); a voxel spans
        ``[v − 0.5, v + 0.5]`` along each axis. ``fine``: see ``_integrate``.
        """


def clip_to_box(
    source: torch.Tensor, target: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray parameters (t0, t1), each (M,), where ``source + t (target − source)`` is inside the box; t0 ≥ t1 if never."""
    ray = target - source
    inv = 1.0 / torch.where(ray.abs() < 1e-12, torch.full_like(ray, 1e-12), ray)
    ta, tb = (lo - source) * inv, (hi - source) * inv
    t0 = torch.minimum(ta, tb).amax(dim=-1).clamp(0.0, 1.0)
    t1 = torch.maximum(ta, tb).amin(dim=-1).clamp(0.0, 1.0)
    return t0, t1


def make_renderer(name: str, vol: CTVolume, geometry: ProjectionGeometry, **kwargs: object) -> Renderer:
    """A renderer backend by name (``diffdrr`` or ``nanodrr``); keyword arguments as :class:`Renderer`."""
    if name == "diffdrr":
        from ct_projection.render import DRRRenderer

        return DRRRenderer(vol, geometry, **kwargs)  # type: ignore[arg-type]
    if name == "nanodrr":
        from ct_projection.render_nanodrr import NanoDRRRenderer

        return NanoDRRRenderer(vol, geometry, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown renderer {name!r}: expected one of {', '.join(RENDERERS)}")


def _shifted(affine: np.ndarray, offset_ijk: np.ndarray | list[int]) -> np.ndarray:
    """Voxel → world affine of a sub-grid whose first voxel is ``offset_ijk`` of ``affine``'s grid."""
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ np.asarray(offset_ijk, dtype=np.float64) + affine[:3, 3]
    return out


def _to_layout(stack: np.ndarray, device: torch.device) -> torch.Tensor:
    """(C, I, J, K) → contiguous float32 (1, C, K, J, I): ``grid_sample``'s (N, C, D, H, W) with x = i."""
    return torch.from_numpy(np.ascontiguousarray(stack.transpose(0, 3, 2, 1), dtype=np.float32))[None].to(device)


def chunks(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    size = max(1, int(size))
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]
