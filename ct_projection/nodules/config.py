"""Nodule settings: :class:`NoduleConfig` (the distributions :class:`NoduleSampler` draws from) and its errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

NODULE_TYPES: tuple[str, ...] = ("solid", "part_solid", "ground_glass")
NODULE_SHAPES: tuple[str, ...] = ("sphere", "lobulated", "spiculated")
DIAMETER_DISTRIBUTIONS: tuple[str, ...] = ("lognormal", "uniform", "loguniform")
FAILURE_MODES: tuple[str, ...] = ("warn", "raise")

# Below this HU a voxel counts as aerated lung parenchyma (vessels, tumours, chest wall are above).
PARENCHYMA_HU = -500.0
MAX_NODULES = 50  # per image: more cannot be placed apart in two lungs and only stalls the run
MAX_DIAMETER_MM = 100.0  # nodules are <= 30 mm, masses larger; beyond 10 cm nothing fits inside a lung


class NoduleConfigError(ValueError):
    """An invalid :class:`NoduleConfig` value; the message lists what is allowed."""


class NodulePlacementError(RuntimeError):
    """A nodule could not be placed anywhere (raised only with ``on_failure='raise'``)."""


class NodulePlacementWarning(UserWarning):
    """A nodule could not be placed and was skipped (``on_failure='warn'``)."""


_RANGE_FIELDS = (
    "count_range",
    "diameter_range_mm",
    "hu_solid_range",
    "hu_ggo_range",
    "core_fraction_range",
    "axis_ratio_range",
    "lobulation_amplitude_range",
    "lobulation_terms_range",
    "lobulation_order_range",
    "spicule_count_range",
    "spicule_length_range",
    "spicule_width_range_mm",
)
_INT_RANGE_FIELDS = ("count_range", "lobulation_terms_range", "lobulation_order_range", "spicule_count_range")


@dataclass
class NoduleConfig:
    """Distributions of everything :class:`NoduleSampler` draws; plain types so it saves as JSON beside outputs.

    Attributes:
        count_range: nodules per image, inclusive integer range (uniform).
        diameter_range_mm: nominal (longest-axis) diameter bounds; every draw lies inside.
        diameter_distribution: ``lognormal`` (default: median ``diameter_median_mm``, log-sd ``diameter_sigma``,
            truncated to the range by inverse-CDF sampling; the defaults, 6–30 mm, 17 mm / 0.35, are the ``node21``
            preset of :mod:`ct_projection.size_presets`, which documents their source),
            ``uniform`` or ``loguniform`` over the range.
        diameter_median_mm / diameter_sigma: log-normal parameters.
        type_probs: probabilities of solid / part_solid / ground_glass (missing keys = 0; normalised).
        hu_solid_range: solid tissue HU (solid nodules and part-solid cores).
        hu_ggo_range: ground-glass HU (ground-glass nodules and part-solid halos).
        core_fraction_range: part-solid core diameter as a fraction of the nodule diameter.
        shape_probs: probabilities of sphere / lobulated / spiculated (missing keys = 0; normalised).
        axis_ratio_range: the two shorter ellipsoid axes as fractions of the longest (all shapes).
        lobulation_amplitude_range: peak radial perturbation as a fraction of the radius (lobulated, spiculated).
        lobulation_terms_range / lobulation_order_range: number of cosine lobes and their polynomial order.
        spicule_count_range: spicules per spiculated nodule.
        spicule_length_range: protrusion beyond the body surface as a fraction of the nominal radius.
        spicule_width_range_mm: spicule base radius in mm (clipped to ≤ 0.25 × nominal radius).
        juxtapleural_prob: probability that a nodule touches the pleura (its extent reaches the lung boundary).
        margin_mm: clearance kept from other nodules, the pleura (non-juxtapleural) and thick dense structures.
        supersample: sub-samples per voxel along the finest axis (coarser axes get proportionally more).
        parenchyma_min_fraction: required fraction of voxels within the nodule's extent below −500 HU.
        dense_min_size_mm: dense (≥ −500 HU) lung structures at least this thick (morphological opening) must stay
            ``margin_mm`` away from the nodule; thinner ones (small vessels) only count against
            ``parenchyma_min_fraction``. 0 forbids any dense voxel.
        max_placement_tries: candidate centres tried per size before shrinking.
        max_size_retries: smaller re-draws (each ≤ 0.8× the previous diameter) before giving up.
        on_failure: ``warn`` (skip the nodule with a :class:`NodulePlacementWarning`) or ``raise``.
    """

    count_range: tuple[int, int] = (1, 3)
    diameter_range_mm: tuple[float, float] = (6.0, 30.0)
    diameter_distribution: str = "lognormal"
    diameter_median_mm: float = 17.0
    diameter_sigma: float = 0.35
    type_probs: dict[str, float] = field(
        default_factory=lambda: {"solid": 0.6, "part_solid": 0.2, "ground_glass": 0.2}
    )
    hu_solid_range: tuple[float, float] = (-10.0, 100.0)
    hu_ggo_range: tuple[float, float] = (-750.0, -300.0)
    core_fraction_range: tuple[float, float] = (0.3, 0.7)
    shape_probs: dict[str, float] = field(
        default_factory=lambda: {"sphere": 0.5, "lobulated": 0.3, "spiculated": 0.2}
    )
    axis_ratio_range: tuple[float, float] = (0.8, 1.0)
    lobulation_amplitude_range: tuple[float, float] = (0.05, 0.15)
    lobulation_terms_range: tuple[int, int] = (2, 4)
    lobulation_order_range: tuple[int, int] = (2, 5)
    spicule_count_range: tuple[int, int] = (4, 12)
    spicule_length_range: tuple[float, float] = (0.3, 1.0)
    spicule_width_range_mm: tuple[float, float] = (0.5, 1.2)
    juxtapleural_prob: float = 0.1
    margin_mm: float = 2.0
    supersample: int = 4
    parenchyma_min_fraction: float = 0.9
    dense_min_size_mm: float = 3.0
    max_placement_tries: int = 200
    max_size_retries: int = 3
    on_failure: str = "warn"

    def __post_init__(self) -> None:
        for name in _RANGE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise NoduleConfigError(f"{name} must be a (min, max) pair, got {value!r}")
            cast = int if name in _INT_RANGE_FIELDS else float
            lo, hi = cast(value[0]), cast(value[1])
            if lo > hi:
                raise NoduleConfigError(f"{name}: min {lo} > max {hi}")
            setattr(self, name, (lo, hi))
        self.type_probs = _check_probs("type", self.type_probs, NODULE_TYPES)
        self.shape_probs = _check_probs("shape", self.shape_probs, NODULE_SHAPES)
        check_choice("diameter_distribution", self.diameter_distribution, DIAMETER_DISTRIBUTIONS)
        check_choice("on_failure", self.on_failure, FAILURE_MODES)
        _check_bounds("count_range", self.count_range, 0, MAX_NODULES)
        _check_bounds("diameter_range_mm", self.diameter_range_mm, 1e-3, MAX_DIAMETER_MM)
        _check_bounds("core_fraction_range", self.core_fraction_range, 0.05, 0.95)
        _check_bounds("axis_ratio_range", self.axis_ratio_range, 0.1, 1.0)
        _check_bounds("lobulation_amplitude_range", self.lobulation_amplitude_range, 0.0, 0.5)
        _check_bounds("lobulation_terms_range", self.lobulation_terms_range, 1, None)
        _check_bounds("lobulation_order_range", self.lobulation_order_range, 1, 12)
        _check_bounds("spicule_count_range", self.spicule_count_range, 0, None)
        _check_bounds("spicule_length_range", self.spicule_length_range, 0.0, None)
        _check_bounds("spicule_width_range_mm", self.spicule_width_range_mm, 0.0, None)
        _check_bounds("juxtapleural_prob", (self.juxtapleural_prob,) * 2, 0.0, 1.0)
        _check_bounds("parenchyma_min_fraction", (self.parenchyma_min_fraction,) * 2, 0.0, 1.0)
        _check_bounds("diameter_median_mm", (self.diameter_median_mm,) * 2, 1e-3, None)
        _check_bounds("diameter_sigma", (self.diameter_sigma,) * 2, 1e-3, None)
        _check_bounds("margin_mm", (self.margin_mm,) * 2, 0.0, None)
        _check_bounds("dense_min_size_mm", (self.dense_min_size_mm,) * 2, 0.0, 20.0)
        for name in ("supersample", "max_placement_tries"):
            if int(getattr(self, name)) < 1:
                raise NoduleConfigError(f"{name} must be an integer ≥ 1, got {getattr(self, name)!r}")
        if int(self.max_size_retries) < 0:
            raise NoduleConfigError(f"max_size_retries must be an integer ≥ 0, got {self.max_size_retries!r}")
        self.supersample = int(self.supersample)
        self.max_placement_tries = int(self.max_placement_tries)
        self.max_size_retries = int(self.max_size_retries)
        for name in ("diameter_median_mm", "diameter_sigma", "juxtapleural_prob", "margin_mm",
                     "parenchyma_min_fraction", "dense_min_size_mm"):
            setattr(self, name, float(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (ranges as 2-element lists)."""
        from data.settings import settings_dict

        return settings_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoduleConfig:
        """Inverse of :meth:`to_dict`, strictly validated (data.settings); a one-line NoduleConfigError."""
        from data.settings import SettingsError, load_settings

        try:
            return load_settings(cls, data, section="nodules")
        except SettingsError as err:
            raise NoduleConfigError(str(err)) from None


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a one-line NoduleConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise NoduleConfigError(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}")


def _check_probs(kind: str, probs: dict[str, float], allowed: tuple[str, ...]) -> dict[str, float]:
    """Validate a {name: probability} dict; returns it in canonical key order with float values."""
    if not isinstance(probs, dict):
        raise NoduleConfigError(f"{kind}_probs must be a dict over {', '.join(allowed)}, got {probs!r}")
    for key in probs:
        if key not in allowed:
            raise NoduleConfigError(f"{kind}_probs: unknown {kind} {key!r}: expected one of {', '.join(allowed)}")
    out = {k: float(probs.get(k, 0.0)) for k in allowed}
    if any(not math.isfinite(v) or v < 0 for v in out.values()) or sum(out.values()) <= 0:
        raise NoduleConfigError(f"{kind}_probs must be non-negative with a positive sum, got {probs!r}")
    return out


def _check_bounds(name: str, rng: tuple[float, float], lo: float | None, hi: float | None) -> None:
    for v in rng:
        if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            allowed = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise NoduleConfigError(f"{name}: value {v} outside the allowed range {allowed}")
