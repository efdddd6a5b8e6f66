"""Contact sheet: a grid of windowed thumbnails with label boxes and titles, for eyeballing a dataset."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data.atomic import atomic_write_bytes
from data.images import encode_png

BOX_COLOUR = (255, 0, 0)
FAINT_BOX_COLOUR = (0, 160, 255)  # nodules labelled but flagged too faint to see: told apart at a glance
TITLE_COLOUR = (255, 255, 0)
TITLE_HEIGHT = 14  # pixels of text band above each thumbnail


def window_to_uint8(img: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Map an image to uint8 with a robust percentile window (ignores non-finite pixels)."""
    arr = np.asarray(img, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    if hi <= lo:  # flat image: avoid dividing by zero (it renders black)
        hi = lo + 1.0
    scaled = np.clip((np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo), 0.0, 1.0)
    return np.rint(scaled * 255.0).astype(np.uint8)


def contact_sheet(
    images: Sequence[np.ndarray],
    boxes: Sequence[Sequence[tuple[float, float, float, float]]],
    titles: Sequence[str],
    path: str | Path,
    cols: int = 4,
    thumb: int = 256,
    faint: Sequence[Sequence[bool]] | None = None,
) -> Path:
    """Save a grid of thumbnails (each fit into ``thumb`` x ``thumb``) with boxes and titles as an RGB PNG.

    The sheet is ``min(cols, n) * thumb`` wide and ``rows * (TITLE_HEIGHT + thumb)`` high.

    Args:
        images: HxW grayscale arrays (any numeric dtype, e.g. uint16 DRRs).
        boxes: per image, pixel boxes (x, y, w, h) in that image's coordinates (pixel-edge convention).
        titles: per image, a short caption.
        path: output PNG.
        cols: thumbnails per row.
        thumb: thumbnail box size in pixels.
        faint: per image, per box, whether the nodule is flagged faint (drawn in ``FAINT_BOX_COLOUR``).
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if not (len(images) == len(boxes) == len(titles)):
        raise ValueError(f"images/boxes/titles lengths differ: {len(images)}, {len(boxes)}, {len(titles)}")
    flags = faint if faint is not None else [[False] * len(b) for b in boxes]
    if len(flags) != len(boxes) or any(len(f) != len(b) for f, b in zip(flags, boxes)):
        raise ValueError("faint flags must match boxes image by image")
    n = len(images)
    ncols = max(1, min(cols, n))
    nrows = math.ceil(n / ncols)
    cell_h = TITLE_HEIGHT + thumb
    sheet = Image.new("RGB", (ncols * thumb, nrows * cell_h), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()

    for i, (img, img_boxes, title, img_faint) in enumerate(zip(images, boxes, titles, flags)):
        arr = np.asarray(img)
        if arr.ndim != 2:
            raise ValueError(f"contact_sheet image {i}: expected HxW grayscale, got shape {arr.shape}")
        h, w = arr.shape
        scale = thumb / max(h, w)
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
        tile = Image.fromarray(window_to_uint8(arr)).resize((tw, th), Image.Resampling.BILINEAR).convert("RGB")
        ox, oy = (i % ncols) * thumb, (i // ncols) * cell_h
        sheet.paste(tile, (ox, oy + TITLE_HEIGHT))
        for (x, y, bw, bh), is_faint in zip(img_boxes, img_faint):
            # Pixel-edge box -> inclusive corner pixels of the thumbnail, kept inside the tile.
            x0 = min(max(math.floor(x * scale), 0), tw - 1)
            y0 = min(max(math.floor(y * scale), 0), th - 1)
            x1 = min(max(math.ceil((x + bw) * scale) - 1, x0), tw - 1)
            y1 = min(max(math.ceil((y + bh) * scale) - 1, y0), th - 1)
            colour = FAINT_BOX_COLOUR if is_faint else BOX_COLOUR
            draw.rectangle((ox + x0, oy + TITLE_HEIGHT + y0, ox + x1, oy + TITLE_HEIGHT + y1), outline=colour)
        # Clip the title to the cell so long names do not spill into the neighbour.
        cell = Image.new("RGB", (thumb, TITLE_HEIGHT), (0, 0, 0))
        ImageDraw.Draw(cell).text((2, 1), str(title), fill=TITLE_COLOUR, font=font)
        sheet.paste(cell, (ox, oy))

    return atomic_write_bytes(path, encode_png(sheet))
