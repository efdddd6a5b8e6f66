"""Chest radiograph acquisition geometry (PA, AP, lateral) and seeded pose jitter.

World frame: RAS+ millimetres of the CT, shifted so that the isocentre (by default the centre of the lungs) is the
origin. DiffDRR 0.6.1 conventions, verified by ``tests/test_render.py``:

* ``orientation="PA"`` with the *identity* pose and the usual ``+y`` source offset puts the source anterior and
  renders the chest upside down. The correct PA pose is the identity rotation with translation ``(0, -SID, 0)``:
  the source sits ``SID`` mm posterior of the isocentre, the detector ``SDD - SID`` mm anterior, and the image comes
  out in radiological display (apices at the top, patient's right on the image's left, so the heart is on the
  image's right).
* AP uses DiffDRR's ``orientation="AP"`` with translation ``(0, +SID, 0)`` (source anterior), displayed the same way.
  An AP chest film is a bedside (portable) exposure: the default source-to-image distance is 1000 mm instead of
  the PA's 1800 mm, so the anterior heart, far from the detector and close to the source, is magnified more.
* Left lateral (LAT): the PA frame rotated +90° about the superior axis; source on the patient's right, detector on
  the left, anterior on the image's left.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import Field

if TYPE_CHECKING:
    from ct_projection.volume import CTVolume

VIEWS = ("PA", "AP", "LAT")
VIEW_ALIASES = {"LATERAL": "LAT"}  # accepted spellings (any case) -> canonical view
DEFAULT_SDD_MM = {"PA": 1800.0, "AP": 1000.0, "LAT": 1800.0}  # PA/lateral: erect at 180 cm; AP: bedside ~100 cm


def canonical_view(view: str) -> str:
    """PA, AP or LAT from any case and the alias LATERAL; ValueError listing the accepted names otherwise."""
    name = str(view).strip().upper()
    name = VIEW_ALIASES.get(name, name)
    if name not in VIEWS:
        raise ValueError(f"unknown view {view!r}: expected one of {', '.join(VIEWS)} (or LATERAL; any case)")
    return name


MAX_SIZE_PX = 8192  # detector pixels per side: 8192² float32 images are already 256 MiB each


@dataclass(frozen=True)
class ProjectionGeometry:
    """A radiographic setup.

    Args:
        view: one of PA, AP, LAT (any case; LATERAL = LAT).
        sdd_mm: source-to-detector distance; default by view: 1800 mm for PA and LAT, 1000 mm for AP (bedside).
        object_detector_mm: isocentre-to-detector distance (patient against the detector: ~150 mm).
        detector_mm: side of the square detector (a 43 x 43 cm flat panel).
        size_px: detector pixels per side (1024 → 0.42 mm pixels).
        jitter_rotation_deg: max |angle| of the uniform per-axis rotation jitter.
        jitter_translation_mm: max |offset| of the uniform per-axis isocentre jitter.
    """

    # Ranges are enforced when a config is read (data.settings.load_settings); __post_init__ checks the rest.
    view: str = "PA"
    sdd_mm: Annotated[float | None, Field(gt=0, le=10_000)] = None  # None: the view's default (AP 1000 mm)
    object_detector_mm: Annotated[float, Field(gt=0)] = 150.0
    detector_mm: Annotated[float, Field(gt=0, le=2_000)] = 430.0
    size_px: Annotated[int, Field(ge=8, le=MAX_SIZE_PX)] = 1024
    jitter_rotation_deg: Annotated[float, Field(ge=0, le=45)] = 2.0
    jitter_translation_mm: Annotated[float, Field(ge=0, le=200)] = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "view", canonical_view(self.view))  # frozen: normalise once, here
        if self.sdd_mm is None:
            object.__setattr__(self, "sdd_mm", DEFAULT_SDD_MM[self.view])
        object.__setattr__(self, "sdd_mm", float(self.sdd_mm))
        if not 0 < self.object_detector_mm < self.sdd_mm:
            raise ValueError(f"object_detector_mm must lie in (0, sdd_mm={self.sdd_mm}), got {self.object_detector_mm}")
        if self.size_px < 8:
            raise ValueError(f"size_px must be >= 8, got {self.size_px}")

    @property
    def sid_mm(self) -> float:
        """Source-to-isocentre distance."""
        return self.sdd_mm - self.object_detector_mm

    @property
    def pixel_mm(self) -> float:
        """Detector pixel pitch (mm)."""
        return self.detector_mm / self.size_px

    @property
    def magnification(self) -> float:
        """Geometric magnification at the isocentre."""
        return self.sdd_mm / self.sid_mm

    @property
    def diffdrr_orientation(self) -> str:
        """DiffDRR ``orientation`` (frame-of-reference change) for this view."""
        return "AP" if self.view == "AP" else "PA"

    def to_dict(self) -> dict:
        """JSON-able form."""
        from data.settings import settings_dict

        return settings_dict(self)


@dataclass(frozen=True)
class Pose:
    """A sampled pose: base view pose plus jitter (recorded in the labels).

    Args:
        rotation_rad: DiffDRR ``euler_angles`` (convention ZXY), radians.
        translation_mm: DiffDRR translation (mm).
        jitter_rotation_deg: the sampled rotation jitter (deg) that went into ``rotation_rad``.
        jitter_translation_mm: the sampled isocentre shift (mm) that went into ``translation_mm``.
    """

    rotation_rad: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    jitter_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    jitter_translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    convention: str = field(default="ZXY")

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)


def base_pose(geometry: ProjectionGeometry) -> Pose:
    """The un-jittered pose for ``geometry.view`` (see module docstring for the derivation)."""
    sid = geometry.sid_mm
    if geometry.view == "PA":
        return Pose((0.0, 0.0, 0.0), (0.0, -sid, 0.0))
    if geometry.view == "AP":
        return Pose((0.0, 0.0, 0.0), (0.0, sid, 0.0))
    return Pose((math.pi / 2, 0.0, 0.0), (0.0, -sid, 0.0))


def get_pose_params(rng: np.random.Generator, geometry: ProjectionGeometry) -> Pose:
    """Sample a jittered pose: uniform rotation (deg) and translation (mm) jitter around the base pose."""
    base = base_pose(geometry)
    rot_j = rng.uniform(-1.0, 1.0, 3) * geometry.jitter_rotation_deg
    trans_j = rng.uniform(-1.0, 1.0, 3) * geometry.jitter_translation_mm
    rotation = tuple(float(r + math.radians(j)) for r, j in zip(base.rotation_rad, rot_j))
    translation = tuple(float(t + j) for t, j in zip(base.translation_mm, trans_j))
    return Pose(
        rotation,  # type: ignore[arg-type]
        translation,  # type: ignore[arg-type]
        tuple(float(v) for v in rot_j),  # type: ignore[arg-type]
        tuple(float(v) for v in trans_j),  # type: ignore[arg-type]
    )


def lung_isocentre(vol: CTVolume, lungs: np.ndarray) -> np.ndarray:
    """World position of the lungs' bounding-box centre: the chest is centred on the detector."""
    idx = np.argwhere(lungs)
    return vol.voxel_to_world((idx.min(0) + idx.max(0)) / 2.0)[0]
