"""The exposed field of a radiograph: where the collimator let the beam through, so realism is measured there.

A collimated radiograph has an unexposed border (white: the 16-bit/8-bit maximum, as on film and as our generator
writes it, ``ct_projection.framing``). Its straight, full-contrast edge is not anatomy, yet it can carry most of an
image's fine-detail energy and shape its spectrum and histogram. ``evaluate-realism --field exposed`` (the default)
therefore measures every image, candidate and real alike, inside its exposed field: the image minus the
border-connected region at its maximum value, shrunk by a margin that covers the penumbra and the fine-detail filter.
An image without such a border (most real CXRs here: 1 of the 52 held-out NIH images has one, 0.16% of its area)
keeps its whole area, so the rule is the same for both sets and changes nothing where there is no collimation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SATURATION_TOL = 1.0 / 1024.0  # within this of the image maximum counts as unexposed (16- and 8-bit alike)
MIN_BORDER_SHARE = 0.005  # a saturated border region smaller than this is a bright detail, not a collimator


def unexposed_border(img01: np.ndarray) -> np.ndarray:
    """Pixels of the border-connected region at the image's maximum (the collimated, unexposed area)."""
    x = np.asarray(img01, dtype=np.float32)
    saturated = x >= float(x.max()) - SATURATION_TOL
    labels, n = ndimage.label(saturated)
    if n == 0:
        return np.zeros(x.shape, dtype=bool)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border = np.isin(labels, np.unique(edge[edge > 0]))
    return border if border.mean() >= MIN_BORDER_SHARE else np.zeros(x.shape, dtype=bool)


def exposed_field(img01: np.ndarray, size: int, margin_px: int) -> np.ndarray:
    """Exposed-field mask at the analysis scale (central square of ``img01`` resized to ``size``), eroded by ``margin_px``.

    An analysis pixel belongs to the field only if every source pixel under it was exposed; the whole image when
    there is no unexposed border.
    """
    from restoration.preprocess import resize_square

    border = unexposed_border(img01)
    if not border.any():
        return np.ones((size, size), dtype=bool)
    inside = resize_square((~border).astype(np.float32), size) > 0.999
    if margin_px > 0:
        inside = ndimage.binary_erosion(inside, iterations=margin_px, border_value=1)
    return inside
