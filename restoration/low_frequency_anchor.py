"""Low-frequency anchoring: keep the input's coarse intensities in a restored image, take only its finer detail.

A data-consistency step for super-resolution (in the spirit of StableSR's wavelet colour fix): the restorer
should add the detail a 512 px DRR cannot hold, not re-expose it. DDPM-HQ learned its tone from real radiographs,
so unanchored it shifts the rendered display tone, the lung histogram and nodule contrast (BENCHMARKS.md, "The
restorers on the new default display"). Anchoring returns the restored image in the input's intensity scale with
its structure coarser than a Gaussian of ``sigma`` output pixels replaced by the bicubic-upsampled input's.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from restoration.preprocess import resize_image


def unwindow(img01: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Invert the percentile window ``(x - lo) / (hi - lo)`` (``preprocess.normalize``): model space -> input scale."""
    return np.asarray(img01, dtype=np.float64) * (hi - lo) + lo


def anchor_low_frequencies(restored: np.ndarray, reference: np.ndarray, sigma: float) -> np.ndarray:
    """``restored`` with its Gaussian(``sigma``) low-pass swapped for ``reference``'s, clipped to [0, 1] (float32).

    Args:
        restored: the restorer's output in the input's intensity scale, (H, W).
        reference: the input resized to (H, W) (bicubic upsample), same intensity scale.
        sigma: Gaussian sigma in output pixels; structure coarser than this comes from ``reference``.
    """
    if restored.shape != reference.shape:
        raise ValueError(f"restored {restored.shape} and reference {reference.shape} differ in shape")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    r = np.asarray(restored, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    out = r + gaussian_filter(ref, sigma, mode="reflect") - gaussian_filter(r, sigma, mode="reflect")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def anchored_output(restored01: np.ndarray, input01: np.ndarray, lo: float, hi: float, sigma: float) -> np.ndarray:
    """A restored image (model space, [0, 1]) anchored to the input it came from (any size, [0, 1]).

    Args:
        restored01: restorer output in the model's windowed space, (H, W).
        input01: the image the caller passed in, before windowing and resizing.
        lo, hi: the percentile window the input was given (``normalize``).
        sigma: Gaussian sigma in output pixels.
    """
    reference = resize_image(np.asarray(input01, dtype=np.float32), restored01.shape)
    return anchor_low_frequencies(unwindow(restored01, lo, hi), reference, sigma)
