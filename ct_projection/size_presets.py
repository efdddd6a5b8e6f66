"""Nodule diameter distributions matching public nodule datasets (``generate --size-preset``).

Each preset sets the :class:`~ct_projection.nodules.NoduleConfig` diameter fields (truncated log-normal):

* ``node21`` (the default): 6–30 mm, median 17 mm, log-sd 0.35. The range is NODE21's (Sogancioglu et al., the
  chest radiograph nodule detection challenge): nodules of 6–30 mm, what radiologists box on a radiograph. The
  median sits above the 13 mm of the 251 real LUNA16/LIDC nodules of the NODE21 generation baseline (nodules found
  on CT, many too small to see on a radiograph) so that the median label box is ≥ 40 px at 1024² (measured with
  ``benchmarks/nodule_sizes.py``, BENCHMARKS.md "Nodule sizes"); it stays below the radiologists' looser NIH
  ChestX-ray8 nodule boxes (median 69 px).
* ``lidc``: 5–46 mm, median 14.7 mm, log-sd 0.47: the log-normal fit of those 251 LUNA16 patches
  (``../shared/data/ct/luna16-nodule-patches/patches.csv``, diameters 5–46 mm).
* ``small``: 3–30 mm, median 9.5 mm, log-sd 0.35: CT-screening sizes (the earlier default); most are invisible on
  a radiograph and carry ``faint``.
"""

from __future__ import annotations

from typing import Any

SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "node21": {"diameter_range_mm": (6.0, 30.0), "diameter_median_mm": 17.0, "diameter_sigma": 0.35},
    "lidc": {"diameter_range_mm": (5.0, 46.0), "diameter_median_mm": 14.7, "diameter_sigma": 0.47},
    "small": {"diameter_range_mm": (3.0, 30.0), "diameter_median_mm": 9.5, "diameter_sigma": 0.35},
}
DEFAULT_SIZE_PRESET = "node21"


def size_preset(name: str) -> dict[str, Any]:
    """The NoduleConfig diameter fields of a preset (log-normal), or a one-line ValueError listing the presets."""
    if name not in SIZE_PRESETS:
        raise ValueError(f"--size-preset: unknown preset {name!r}: expected one of {', '.join(SIZE_PRESETS)}")
    return {"diameter_distribution": "lognormal", **SIZE_PRESETS[name]}
