"""Deterministic PNG writing (16-bit DRRs, 8-bit previews) and grayscale image reading."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from data.atomic import DatasetWriteError, atomic_write_bytes

# Fixed encoder settings: Pillow writes no timestamps/text chunks unless asked, so bytes depend only on pixels.
_PNG_OPTIONS = {"format": "PNG", "optimize": False, "compress_level": 6}


def encode_png(image: Image.Image) -> bytes:
    """Encode a Pillow image as PNG bytes with fixed settings and no metadata chunks."""
    buf = io.BytesIO()
    image.save(buf, **_PNG_OPTIONS)
    return buf.getvalue()


def write_png16(path: str | Path, img: np.ndarray) -> Path:
    """Atomically write a HxW uint16 array as a 16-bit grayscale PNG, verifying the round trip.

    Raises:
        ValueError: if ``img`` is not a 2-D uint16 array.
        DatasetWriteError: if the file cannot be written or does not decode back to ``img``.
    """
    img = np.asarray(img)
    if img.ndim != 2 or img.dtype.kind != "u" or img.dtype.itemsize != 2:  # any byte order
        raise ValueError(f"{path}: write_png16 needs a 2-D uint16 array, got {img.dtype} {img.shape}")
    # Little-endian + contiguous so Pillow picks mode "I;16" regardless of the input's byte order/strides.
    pixels = np.ascontiguousarray(img, dtype="<u2")
    data = encode_png(Image.fromarray(pixels))
    with Image.open(io.BytesIO(data)) as check:
        if not np.array_equal(_as_uint16(check, path), pixels):
            raise DatasetWriteError(path, "16-bit PNG round trip changed pixel values")
    return atomic_write_bytes(path, data)


def _as_uint16(image: Image.Image, path: str | Path) -> np.ndarray:
    """Pixels of a 16-bit grayscale Pillow image as uint16 (Pillow may report such PNGs as "I;16" or "I")."""
    if image.mode in ("I;16", "I;16L", "I;16B"):
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":
        arr = np.asarray(image)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"{path}: 32-bit image values outside the uint16 range")
        return arr.astype(np.uint16)
    raise ValueError(f"{path}: expected a 16-bit grayscale PNG, got Pillow mode {image.mode!r}")


def read_png16(path: str | Path) -> np.ndarray:
    """Read a 16-bit grayscale PNG as a HxW uint16 array."""
    with Image.open(path) as image:
        return _as_uint16(image, path)


def write_png8(path: str | Path, img: np.ndarray) -> Path:
    """Atomically write an 8-bit PNG from uint8 HxW / HxWx3, or from float in [0, 1] (clipped, rounded)."""
    arr = np.asarray(img)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"{path}: write_png8 needs HxW or HxWx3, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.rint(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"{path}: write_png8 needs uint8 or float in [0, 1], got {arr.dtype}")
    return atomic_write_bytes(path, encode_png(Image.fromarray(np.ascontiguousarray(arr))))


def read_image(path: str | Path) -> np.ndarray:
    """Read any PNG/JPEG as float32 HxW grayscale in [0, 1] (16-bit scaled by 65535, 8-bit by 255)."""
    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16L", "I;16B", "I"):
            return _as_uint16(image, path).astype(np.float32) / np.float32(65535.0)
        if image.mode == "F":
            return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        if image.mode != "L":
            image = image.convert("L")  # RGB/RGBA/P/1/LA: ITU-R 601 luma, alpha dropped
        return np.asarray(image, dtype=np.float32) / np.float32(255.0)
