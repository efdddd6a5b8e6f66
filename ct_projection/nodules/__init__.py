"""Synthetic lung nodules: sample every random parameter first, then insert them deterministically.

Split along its seams: ``config`` (:class:`NoduleConfig` and the errors), ``shape`` (:class:`NoduleParams`, the
implicit shape geometry and its CT-grid bounds), ``placement`` (:class:`NoduleSampler`: all randomness, and where a
nodule fits) and ``insertion`` (:func:`nodule_deltas` / :func:`insert_nodules`: deterministic partial-volume ΔHU).
The same params always give byte-identical ΔHU sub-volumes; every sampled value becomes label metadata.
"""

from ct_projection.nodules.config import NoduleConfig, NoduleConfigError, NodulePlacementError, NodulePlacementWarning
from ct_projection.nodules.insertion import InsertedNodule, insert_nodules, nodule_deltas
from ct_projection.nodules.placement import LOBE_NAMES, NoduleSampler
from ct_projection.nodules.shape import NoduleParams, nodule_surface_points

__all__ = [
    "LOBE_NAMES",
    "InsertedNodule",
    "NoduleConfig",
    "NoduleConfigError",
    "NoduleParams",
    "NodulePlacementError",
    "NodulePlacementWarning",
    "NoduleSampler",
    "insert_nodules",
    "nodule_deltas",
    "nodule_surface_points",
]
