"""The DiffDRR backend: DiffDRR 0.6.1's exact Siddon ray tracing (the reference renderer, differentiable).

Everything is a line integral of linear attenuation (see ``attenuation.py``), which is additive: the radiograph of
CT + nodules equals the radiograph of the CT plus the radiograph of each nodule's attenuation change alone. We render
the nodule-free CT once per pose and each nodule's ΔHU sub-volume only over the detector window its bounding box
can reach (``Renderer.render_window``); this gives the paired with/without images, exact per-nodule footprints, and
costs little on top of one plain DiffDRR render.

Siddon's method intersects each ray with every voxel plane of the (body-cropped) grid, sorts the intersections and
sums voxel value × intersection length. We call DiffDRR's own intersection code (``_get_alphas``, ``_get_xyzs``) and
look the voxels up for all ``C`` channels at once, so a multi-channel render shares the costly part (the sort).
"""

from __future__ import annotations

import torch
from torch.nn.functional import grid_sample

from ct_projection.renderer import Renderer, Window, chunks, pick_device

__all__ = ["DRRRenderer", "Window", "pick_device"]

_EPS = 1e-8  # DiffDRR's Siddon default (avoids division by zero for axis-parallel rays)


class DRRRenderer(Renderer):
    """Exact Siddon line integrals (DiffDRR); arguments as :class:`ct_projection.renderer.Renderer`."""

    name = "diffdrr"

    def _trace(
        self, volume: torch.Tensor, source: torch.Tensor, target: torch.Tensor, length: torch.Tensor, fine: bool
    ) -> torch.Tensor:
        """(C, M) Siddon line integrals (exact: ``fine`` changes nothing)."""
        return siddon_trace(volume, source, target, length, self.rays_per_chunk)


def siddon_trace(
    volume: torch.Tensor, source: torch.Tensor, target: torch.Tensor, length: torch.Tensor, rays_per_chunk: int
) -> torch.Tensor:
    """(C, M) exact Siddon line integrals of a (1, C, K, J, I) volume; rays in voxel coordinates, in chunks.

    Args:
        volume: the channels, ``grid_sample`` layout.
        source: (1, 3) ray source; target: (M, 3) ray ends (voxel coordinates, voxel v spans [v − 0.5, v + 0.5]).
        length: (M,) world length of each ray (mm).
        rays_per_chunk: rays traced at once (bounds the sorted-plane arrays: ~(I + J + K) floats per ray).
    """
    from diffdrr.renderers import _get_alphas, _get_xyzs

    dims = torch.tensor(volume.shape[2:][::-1], dtype=torch.float32, device=volume.device)  # (I, J, K)
    src = source[None]  # (1, 1, 3)
    parts = []
    for part in chunks(target.shape[0], rays_per_chunk):
        tgt = target[None, part]  # (1, m, 3)
        alphas = _get_alphas(src, tgt, dims, 0.5, _EPS, False)  # every plane crossing, sorted: (1, m, P)
        mid = (alphas[..., :-1] + alphas[..., 1:]) / 2  # each midpoint lies in exactly one voxel
        xyzs = _get_xyzs(mid, src, tgt, dims, 0.5, _EPS)  # (1, 1, m, P-1, 3) in grid_sample's [-1, 1]
        voxels = grid_sample(volume, xyzs, mode="nearest", align_corners=False)[:, :, 0]  # (1, C, m, P-1)
        seg = torch.diff(alphas, dim=-1)[:, None]  # intersection lengths, in units of the ray length
        parts.append((voxels * seg).sum(dim=-1)[0] * length[part])
    return torch.cat(parts, dim=-1)
