"""Framing like a radiographer: detector placed from the lungs, field collimated to what the CT covers.

A CT covers a slab of the body: above its first and below its last slice there is nothing to project, so a DRR
shows the CT's box edges as straight horizontal lines through anatomy. A radiograph never does. Here:

* **Placement**: the chest is centred left–right (and front–back) on the lungs, and the detector is positioned so
  the lung apices land ``APEX_MARGIN_MM`` (5 cm) below its top edge, as a radiographer sets the cassette; when the
  lungs are too tall for that, they are centred.
* **Collimation**: the exposed field is the detector rectangle the CT covers for this pose (the inner bounds of its
  projected slab, body depth only), inset by two penumbra widths. Outside it the collimator leaves stop the
  primary beam: the image there is unexposed (the 16-bit scale's maximum attenuation ``l_max``, white as on a
  collimated film), joined to the field by a Gaussian penumbra of ``PENUMBRA_MM``. The nodule-free twin gets the
  same field; labels outside it are dropped with a reason; the field is recorded per image.
* **Coverage**: a CT whose lungs reach its first/last slice or its side edges is reported (what is cut), and a CT
  that does not hold both lungs is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import ndtr

from ct_projection.geometry import Pose, ProjectionGeometry
from ct_projection.volume import CTInputError, CTVolume

if TYPE_CHECKING:
    from ct_projection.body import BodyMask

APEX_MARGIN_MM = 50.0  # lung apices this far below the detector's top edge (on the detector)
BASE_MARGIN_MM = 20.0  # at least this below the lung bases, else the lungs are centred instead
PENUMBRA_MM = 2.0  # Gaussian sigma of the collimator edge on the detector
MIN_LUNG_SHARE = 0.2  # the smaller lung must hold at least this share of the larger one's volume


def framed_isocentre(vol: CTVolume, lungs: np.ndarray, geometry: ProjectionGeometry) -> np.ndarray:
    """World isocentre: lungs' box centre left–right and front–back; height puts the apices 5 cm below the top."""
    idx = np.argwhere(lungs)
    lo, hi = vol.voxel_to_world(idx.min(0))[0], vol.voxel_to_world(idx.max(0))[0]
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    centre = (lo + hi) / 2.0
    m = geometry.magnification
    half = geometry.detector_mm / 2.0
    height = (hi[2] - lo[2]) * m
    if height + APEX_MARGIN_MM + BASE_MARGIN_MM <= geometry.detector_mm:
        centre[2] = hi[2] - (half - APEX_MARGIN_MM) / m  # apex projects APEX_MARGIN_MM below the top edge
    return centre


def coverage_notes(vol: CTVolume, lungs: np.ndarray) -> list[str]:
    """What of the lungs the CT does not cover (lungs touching its first/last slice or its side edges)."""
    notes = []
    k = np.flatnonzero(lungs.any(axis=(0, 1)))
    top_is_high_k = vol.affine[2, 2] > 0  # canonical RAS+: k increases toward superior
    first, last = (k.min() == 0), (k.max() == lungs.shape[2] - 1)
    apex_cut, base_cut = (last, first) if top_is_high_k else (first, last)
    if apex_cut:
        notes.append("lung apices cut (lungs reach the CT's top slice)")
    if base_cut:
        notes.append("lung bases cut (lungs reach the CT's bottom slice)")
    i = np.flatnonzero(lungs.any(axis=(1, 2)))
    j = np.flatnonzero(lungs.any(axis=(0, 2)))
    if i.min() == 0 or i.max() == lungs.shape[0] - 1 or j.min() == 0 or j.max() == lungs.shape[1] - 1:
        notes.append("lungs cut at the CT's in-plane field of view")
    return notes


def check_both_lungs(vol: CTVolume, lungs: np.ndarray) -> None:
    """Refuse (one line naming the file) a CT that does not hold both lungs.

    The body's midline is the median world x of its tissue (HU > −300, subsampled); each side must hold at least
    ``MIN_LUNG_SHARE`` of the other side's lung volume.
    """
    stride = max(1, int(np.ceil((vol.hu.size / 2_000_000) ** (1 / 3))))
    tissue = np.argwhere(vol.hu[::stride, ::stride, ::stride] > -300.0) * stride
    lung_idx = np.argwhere(lungs[::stride, ::stride, ::stride]) * stride
    if len(tissue) == 0 or len(lung_idx) == 0:
        return  # nothing to split; lung_mask refuses lung-free volumes itself
    midline = float(np.median(vol.voxel_to_world(tissue)[:, 0]))
    x = vol.voxel_to_world(lung_idx)[:, 0]
    right, left = int((x > midline).sum()), int((x <= midline).sum())  # RAS: +x is the patient's right
    ml = float(np.prod(vol.spacing)) * stride**3 / 1000.0
    if min(right, left) < MIN_LUNG_SHARE * max(right, left):
        raise CTInputError(
            vol.source or "<array>",
            f"the CT does not cover both lungs (right {right * ml:.0f} mL, left {left * ml:.0f} mL either side of "
            "the body's midline); a chest radiograph needs both",
        )


@dataclass(frozen=True)
class Field:
    """The exposed rectangle on the detector (pixel-edge coordinates) and its penumbra."""

    top: float
    bottom: float
    left: float
    right: float
    sigma_px: float

    def weight(self, size: int) -> np.ndarray:
        """(size, size) exposure weight: 1 inside the field, 0 under the collimator leaves, Gaussian edges."""
        c = np.arange(size) + 0.5
        s = max(self.sigma_px, 1e-6)
        rows = ndtr((c - self.top) / s) * ndtr((self.bottom - c) / s)
        cols = ndtr((c - self.left) / s) * ndtr((self.right - c) / s)
        return np.outer(rows, cols)

    def to_dict(self) -> dict[str, Any]:
        """Recorded per image: the field as a pixel box (x, y, w, h) and the penumbra."""
        return {
            "field_xywh": [round(self.left, 2), round(self.top, 2), round(self.right - self.left, 2),
                           round(self.bottom - self.top, 2)],
            "penumbra_sigma_px": round(self.sigma_px, 3),
        }  # fmt: skip


def covered_box_world(vol: CTVolume, body: BodyMask | None) -> np.ndarray:
    """(2, 2, 3): the world box of the CT's grid ([0]: min/max corner) and of the body inside it ([1]).

    The field follows the grid across the image (air beside the body is real) and the body along the beam.
    """
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], float)
    grid = vol.voxel_to_world(corners * (np.array(vol.shape) - 1) + (corners * 2 - 1) * 0.5)
    lo, hi = grid.min(0), grid.max(0)
    if body is not None and body.coarse.any():
        box = body.bounding_slices()
        first = np.array([s.start for s in box], float) - 0.5
        last = np.array([s.stop - 1 for s in box], float) + 0.5
        b = vol.voxel_to_world(np.stack([first, last]))
        return np.stack([np.stack([lo, hi]), np.stack([np.maximum(lo, b.min(0)), np.minimum(hi, b.max(0))])])
    return np.stack([np.stack([lo, hi]), np.stack([lo, hi])])


def collimation_field(renderer: Any, pose: Pose, covered: np.ndarray, penumbra_mm: float = PENUMBRA_MM) -> Field:
    """The largest detector rectangle every ray of which crosses only the covered slab, inset by 2 sigma.

    Args:
        covered: :func:`covered_box_world`'s grid and body boxes.
    """
    geometry: ProjectionGeometry = renderer.geometry
    size = geometry.size_px
    centre = covered[1].mean(0)
    # Which world axis runs along the image rows / columns for this pose (z for rows; x for PA/AP, y for LAT).
    probe = renderer.project(pose, np.vstack([centre, centre + np.eye(3) * 10.0]))
    d = np.abs(probe[1:] - probe[0])
    col_axis, row_axis = int(np.argmax(d[:, 0])), int(np.argmax(d[:, 1]))
    box_world = covered[0].copy()
    depth = 3 - col_axis - row_axis
    box_world[:, depth] = covered[1][:, depth]  # along the beam only the body matters
    bounds = {}
    for axis, coord in ((row_axis, 1), (col_axis, 0)):
        faces = []
        for end in (0, 1):
            pts = np.array([[box_world[(n >> a) & 1 if a != axis else end, a] for a in range(3)] for n in range(8)])
            faces.append(renderer.project(pose, pts)[:, coord])
        near, far = sorted(faces, key=lambda f: float(np.mean(f)))
        bounds[coord] = (float(near.max()), float(far.min()))  # inner bounds: every ray stays inside the slab
    sigma = penumbra_mm / geometry.pixel_mm
    top, bottom = bounds[1][0] + 2 * sigma, bounds[1][1] - 2 * sigma
    left, right = bounds[0][0] + 2 * sigma, bounds[0][1] - 2 * sigma
    top, left = max(top, 0.0), max(left, 0.0)
    bottom, right = min(bottom, float(size)), min(right, float(size))
    return Field(top, bottom, left, right, sigma)


def collimate(line_integral: np.ndarray, weight: np.ndarray, l_unexposed: float) -> np.ndarray:
    """Blend the exposed image with the unexposed level under the collimator (line integrals, float32)."""
    return (line_integral * weight + l_unexposed * (1.0 - weight)).astype(np.float32)
