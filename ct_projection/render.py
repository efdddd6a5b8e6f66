"""DRR rendering with DiffDRR: whole radiographs, nodule-only renders on detector windows, and 3D→2D projection.

Everything is a line integral of linear attenuation (see ``attenuation.py``), which is additive: the radiograph of
CT + nodules equals the radiograph of the CT plus the radiograph of each nodule's attenuation change alone. We render
the nodule-free CT once per pose and each nodule's ΔHU sub-volume only over the detector window its bounding box
can reach; this gives the paired with/without images, exact per-nodule footprints, and costs little on top of one
plain DiffDRR render.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ct_projection.attenuation import AttenuationModel
from ct_projection.body import body_mask, bounding_slices
from ct_projection.geometry import Pose, ProjectionGeometry
from ct_projection.volume import CTVolume

if TYPE_CHECKING:  # heavy imports stay inside the functions at run time
    from diffdrr.pose import RigidTransform
    from torchio import Subject

log = logging.getLogger(__name__)


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


def _subject(density: np.ndarray, affine: np.ndarray, orientation: str) -> Subject:
    """A torchio Subject in the layout DiffDRR's ``DRR`` reads (volume, density, reorient, mask)."""
    from torchio import ScalarImage, Subject

    tensor = torch.from_numpy(np.ascontiguousarray(density, dtype=np.float32))[None]
    image = ScalarImage(tensor=tensor, affine=affine)
    return Subject(
        volume=image,
        density=image,
        mask=None,
        orientation=orientation,
        reorient=_REORIENT[orientation],
        fiducials=None,
    )


# DiffDRR 0.6.1's frame-of-reference changes (``diffdrr.data.read``), repeated so subjects need not be re-read.
_REORIENT = {
    "AP": torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float32),
    "PA": torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float32),
}


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


class DRRRenderer:
    """Renders one CT under a geometry with DiffDRR's Siddon ray tracer.

    Args:
        vol: the CT (HU, RAS+ affine).
        geometry: acquisition geometry.
        attenuation: HU → μ model.
        isocentre_world: RAS mm point placed at the isocentre (default: volume centre).
        device: ``auto``/``cpu``/``cuda``.
        rays_per_chunk: rays traced at once (bounds peak memory; DiffDRR ``patch_size``).
        body_only: zero μ outside the patient's body (no CT table, no air noise) and crop the grid to the body.
    """

    def __init__(
        self,
        vol: CTVolume,
        geometry: ProjectionGeometry,
        attenuation: AttenuationModel | None = None,
        isocentre_world: np.ndarray | None = None,
        device: str | None = None,
        rays_per_chunk: int | None = None,
        body_only: bool = True,
    ) -> None:
        from diffdrr.drr import DRR

        self.geometry = geometry
        self.attenuation = attenuation or AttenuationModel()
        self.device = pick_device(device)
        self.isocentre_world = np.asarray(
            vol.center_world() if isocentre_world is None else isocentre_world, dtype=np.float64
        )
        # World frame of the renderer: the CT's RAS frame shifted so the isocentre is the origin.
        self.affine = vol.affine.copy()
        self.affine[:3, 3] -= self.isocentre_world
        size = geometry.size_px
        self.patch_size = _patch_size(size, rays_per_chunk or (65536 if self.device.type == "cuda" else 16384))
        mu = self.attenuation.mu(vol.hu)
        affine = self.affine
        if body_only:
            body = body_mask(vol.hu, vol.spacing)
            crop = bounding_slices(body)
            mu = np.where(body, mu, 0.0).astype(np.float32)[crop]
            affine = self.affine.copy()
            affine[:3, 3] = self.affine[:3, :3] @ np.array([c.start for c in crop], float) + self.affine[:3, 3]
        subject = _subject(mu, affine, geometry.diffdrr_orientation)
        self.drr = DRR(
            subject,
            sdd=geometry.sdd_mm,
            height=size,
            delx=geometry.pixel_mm,
            renderer="siddon",
            patch_size=self.patch_size,
        ).to(self.device)
        self._orientation = geometry.diffdrr_orientation

    def pose_transform(self, pose: Pose) -> RigidTransform:
        """The DiffDRR ``RigidTransform`` for a pose."""
        from diffdrr.pose import convert

        rot = torch.tensor([pose.rotation_rad], dtype=torch.float32, device=self.device)
        trans = torch.tensor([pose.translation_mm], dtype=torch.float32, device=self.device)
        return convert(rot, trans, parameterization="euler_angles", convention=pose.convention)

    @torch.no_grad()
    def render(self, pose: Pose) -> np.ndarray:
        """Line-integral image L (H, W), float32, for the whole detector."""
        img = self.drr(self.pose_transform(pose))
        return img[0, 0].float().cpu().numpy()

    @torch.no_grad()
    def project(self, pose: Pose, points_world: np.ndarray) -> np.ndarray:
        """Project (N, 3) CT-world RAS mm points to (N, 2) detector (x=col, y=row), pixel-edge convention."""
        pts = np.atleast_2d(np.asarray(points_world, dtype=np.float64)) - self.isocentre_world
        t = torch.tensor(pts[None], dtype=torch.float32, device=self.device)
        return self.drr.perspective_projection(self.pose_transform(pose), t)[0].cpu().numpy().astype(np.float64)

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

    @torch.no_grad()
    def render_delta(self, pose: Pose, delta_hu: np.ndarray, offset_ijk: np.ndarray, window: Window) -> np.ndarray:
        """Line integral of an HU change on a sub-box of the CT grid, over a detector window only.

        Args:
            pose: the same pose as the full render.
            delta_hu: (a, b, c) HU change (new − old), zero outside the object.
            offset_ijk: index of the sub-box's first voxel in the CT grid.
            window: detector rows/cols to trace.
        """
        from diffdrr.drr import DRR

        # DiffDRR squeezes the density, so a 1-voxel-thin box would lose an axis: pad with zeros (adds nothing).
        delta_hu = np.pad(delta_hu, [(0, max(0, 2 - n)) for n in delta_hu.shape])
        sub_affine = self.affine.copy()
        sub_affine[:3, 3] = self.affine[:3, :3] @ np.asarray(offset_ijk, dtype=np.float64) + self.affine[:3, 3]
        subject = _subject(self.attenuation.delta_mu(delta_hu), sub_affine, self._orientation)
        sub = DRR(subject, sdd=self.geometry.sdd_mm, height=8, delx=self.geometry.pixel_mm).to(self.device)
        source, target = self.drr.detector(self.pose_transform(pose), None)
        size = self.geometry.size_px
        rows = torch.arange(window.r0, window.r1, device=self.device)
        cols = torch.arange(window.c0, window.c1, device=self.device)
        idx = (rows[:, None] * size + cols[None, :]).reshape(-1)
        img = sub.render(sub.density, source, target[:, idx])
        return img[0, 0].float().cpu().numpy().reshape(window.shape)


def _patch_size(size: int, rays_per_chunk: int) -> int | None:
    """Largest DiffDRR ``patch_size`` (divides ``size``) whose square does not exceed ``rays_per_chunk``."""
    if size * size <= rays_per_chunk:
        return None
    for p in range(int(np.sqrt(rays_per_chunk)), 0, -1):
        if size % p == 0:
            return p
    return None
