"""The lung field on the detector: where the 3D lung mask projects, for per-image display windows.

Lung voxels are sampled every ~``step_mm`` once per CT; per pose their centres are projected with DiffDRR's
perspective projection (the renderer's, the same as every label box) and the hit pixels are closed into a filled region.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ct_projection.geometry import Pose
from ct_projection.renderer import Renderer
from ct_projection.volume import CTVolume


class LungField:
    """Projects one CT's lung mask onto the detector for any pose.

    Args:
        vol: the CT.
        lungs: bool lung mask on its grid.
        step_mm: spacing of the sampled lung points (finer costs more projections, same region).
    """

    def __init__(self, vol: CTVolume, lungs: np.ndarray, step_mm: float = 3.0) -> None:
        stride = [max(1, int(round(step_mm / s))) for s in vol.spacing]
        sub = np.asarray(lungs, dtype=bool)[:: stride[0], :: stride[1], :: stride[2]]
        idx = np.argwhere(sub).astype(np.float64) * np.asarray(stride, dtype=np.float64)
        self.points_world = vol.voxel_to_world(idx) if idx.size else np.zeros((0, 3))
        self.step_mm = float(max(np.asarray(stride) * vol.spacing))

    def mask(self, renderer: Renderer, pose: Pose) -> np.ndarray:
        """(size, size) bool: pixels whose ray crosses the lung (filled, gaps between sampled points closed)."""
        size = renderer.geometry.size_px
        out = np.zeros((size, size), dtype=bool)
        if len(self.points_world) == 0:
            return out
        uv = renderer.project(pose, self.points_world)
        cols, rows = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        keep = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
        out[rows[keep], cols[keep]] = True
        # Sampled points land up to step_mm (magnified, ≤ 1.3x at chest geometry) apart on the detector.
        gap_px = int(np.ceil(1.3 * self.step_mm / renderer.geometry.pixel_mm))
        if gap_px >= 1:
            structure = ndimage.generate_binary_structure(2, 1)
            out = ndimage.binary_closing(np.pad(out, gap_px), structure, iterations=gap_px)[gap_px:-gap_px, gap_px:-gap_px]
        return ndimage.binary_fill_holes(out)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask (for images restored at another size)."""
    if mask.shape == tuple(shape):
        return mask
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1).astype(int)
    return mask[np.ix_(rows, cols)]
