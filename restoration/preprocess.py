"""Chest X-ray preprocessing shared by the restoration models: loading, windowing, resizing, leak-free splits."""

from __future__ import annotations

import csv
import functools
import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


@dataclass
class PreprocessConfig:
    """How a radiograph becomes a model input.

    Args:
        size: side of the square output image in pixels.
        low_pct: lower percentile mapped to -1 (robust black point).
        high_pct: upper percentile mapped to +1 (robust white point).
    """

    size: int = 256
    low_pct: float = 0.5
    high_pct: float = 99.5

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"PreprocessConfig.size must be >= 1, got {self.size}")
        if not 0.0 <= self.low_pct < self.high_pct <= 100.0:
            raise ValueError(
                f"PreprocessConfig needs 0 <= low_pct < high_pct <= 100, got {self.low_pct}, {self.high_pct}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        from data.settings import settings_dict

        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], section: str = "preprocess") -> PreprocessConfig:
        """Inverse of ``to_dict``, strictly validated (data.settings): unknown keys and wrong types are one line."""
        from data.settings import load_settings

        return load_settings(cls, d, section=section)


# ----------------------------------------------------------------------------------------------- loading


def _is_dicom(path: Path) -> bool:
    """DICOM by suffix or by the 'DICM' magic at byte 128 (many DICOMs have no suffix)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _load_dicom(path: Path) -> np.ndarray:
    """DICOM pixels -> modality LUT -> VOI LUT/window -> [0, 1], MONOCHROME1 inverted so bone is bright."""
    import pydicom  # local import: only needed for DICOM input
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]  # multi-frame: first frame only
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # RGB DICOM (rare for CXR): luma-ish mean
        arr = arr[..., :3].astype(np.float64).mean(axis=-1)
        photometric = "MONOCHROME2"
    else:
        arr = apply_modality_lut(arr, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            arr = apply_voi_lut(arr, ds, index=0)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D DICOM image, got pixel array shape {arr.shape}")
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if photometric == "MONOCHROME1":  # MONOCHROME1: high values are dark
        out = 1.0 - out
    return out.astype(np.float32)


def _check_opaque(path: Path) -> None:
    """Refuse a raster image whose alpha channel hides part of it (an opaque alpha is ignored)."""
    from PIL import Image

    with Image.open(path) as image:
        has_alpha = image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info
        if not has_alpha:
            return
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
    if alpha.min() < 255:
        share = float(np.mean(alpha < 255))
        raise ValueError(
            f"{path}: has transparent pixels ({100 * share:.1f}% of the image); a radiograph must be opaque: "
            "flatten it onto black or save it without alpha"
        )


def load_grayscale(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG (8/16-bit, RGB -> gray, opaque alpha ignored) or DICOM as float32 HxW in [0, 1].

    DICOM pixels go through the modality and VOI LUTs; MONOCHROME1 is inverted so bone is bright.

    Raises:
        ValueError: one line, ``"PATH: problem"``, when the file is missing, cannot be decoded, or has
            transparent pixels.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such image file")
    try:
        if _is_dicom(p):
            img = _load_dicom(p)
        else:
            from data.images import read_image  # shared reader: 16-bit /65535, 8-bit /255, RGB -> luma

            _check_opaque(p)
            img = read_image(p)
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        raise ValueError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from exc
    except Exception as exc:  # Pillow/pydicom raise many types for corrupt files
        raise ValueError(f"{p}: cannot read image ({type(exc).__name__}: {' '.join(str(exc).split())})") from exc
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"{p}: expected a non-empty 2-D grayscale image, got shape {img.shape}")
    return np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0)


# ------------------------------------------------------------------------------------ intensity / geometry


def percentile_window(img: np.ndarray, cfg: PreprocessConfig | None = None) -> tuple[float, float]:
    """(lo, hi): the image's cfg.low_pct and cfg.high_pct percentiles, the window ``normalize`` maps to -1..1."""
    cfg = cfg or PreprocessConfig()
    lo, hi = np.percentile(np.asarray(img, dtype=np.float32), [cfg.low_pct, cfg.high_pct])
    return float(lo), float(hi)


def normalize(img: np.ndarray, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """Robust percentile window (cfg.low_pct..cfg.high_pct -> 0..1, clipped), then to [-1, 1] float32."""
    x = np.asarray(img, dtype=np.float32)
    lo, hi = percentile_window(x, cfg)
    if not hi > lo:  # flat image: no contrast to stretch
        return np.zeros_like(x, dtype=np.float32)
    out = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return (out * 2.0 - 1.0).astype(np.float32)


def center_crop_square(img: np.ndarray) -> np.ndarray:
    """Central square crop of side min(H, W)."""
    h, w = img.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[..., top : top + s, left : left + s]


def resize_image(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize HxW to ``size_hw`` (area when shrinking, antialiased bicubic clamped to the input range else)."""
    a = np.ascontiguousarray(np.asarray(img, dtype=np.float32))
    h, w = (int(v) for v in size_hw)
    if h < 1 or w < 1:
        raise ValueError(f"resize target must be at least 1x1, got {h}x{w}")
    if (h, w) == a.shape[-2:]:
        return a.astype(np.float32, copy=True)
    t = torch.from_numpy(a)[None, None]
    if h * w <= a.shape[-2] * a.shape[-1]:
        out = F.interpolate(t, size=(h, w), mode="area")  # box average: no aliasing, no overshoot
    else:
        out = F.interpolate(t, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        out = out.clamp(float(a.min()), float(a.max()))  # bicubic overshoot would leave the value range
    return out[0, 0].numpy().astype(np.float32)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Center-crop HxW to a square, then resize to size x size (area when shrinking, antialiased bicubic else)."""
    return resize_image(center_crop_square(np.asarray(img, dtype=np.float32)), (size, size))


def model_scale_size(height: int, width: int, longer_side: int) -> tuple[int, int]:
    """(h, w) with the longer side ``longer_side`` and the aspect ratio kept (rounded, each side >= 1).

    Restoration models learn anatomy at one scale: whole radiographs resized to their training side.
    """
    if height < 1 or width < 1 or longer_side < 1:
        raise ValueError(f"model_scale_size needs positive sizes, got {height}x{width} -> {longer_side}")
    f = longer_side / max(height, width)
    return max(1, round(height * f)), max(1, round(width * f))


def preprocess_image(img01: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """[0, 1] image -> windowed [-1, 1] square of side cfg.size (window computed at full resolution)."""
    return resize_square(normalize(img01, cfg), cfg.size)


def prewindowed_image(img01: np.ndarray, size: int) -> np.ndarray:
    """Already-windowed [0, 1] image (a pairs folder's PNG) -> [-1, 1] square of side ``size``, mapped linearly.

    A second percentile window would stretch LQ and HQ of a pair differently (their percentiles differ).
    """
    return resize_square(np.asarray(img01, dtype=np.float32) * 2.0 - 1.0, size)


# ----------------------------------------------------------------------------------------- listing/splits


def list_images(folder: str | Path) -> list[Path]:
    """All .png/.jpg/.jpeg/.dcm files under ``folder`` (recursive, sorted, hidden files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder of images")
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def split_by_source(
    paths: Sequence[str | Path],
    val_fraction: float,
    seed: int = 0,
    group_of: Callable[[Path], Hashable] | None = None,
) -> tuple[list[Path], list[Path]]:
    """Deterministic train/val split where every group (e.g. patient) lies entirely on one side.

    Groups are shuffled with ``seed`` (independent of input order) and moved to val until it holds
    at least ``val_fraction`` of the images. Without ``group_of`` each file stem is its own group.

    Returns:
        (train, val), each in sorted path order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    items = sorted({Path(p) for p in paths})
    key = group_of or (lambda p: p.stem)
    groups: dict[Hashable, list[Path]] = {}
    for p in items:
        groups.setdefault(key(p), []).append(p)
    names = sorted(groups, key=str)
    random.Random(seed).shuffle(names)
    target = val_fraction * len(items)
    val_groups: set[Hashable] = set()
    n_val = 0
    for g in names:
        if n_val >= target or len(val_groups) >= len(names) - 1:  # always keep >= 1 group for training
            break
        if val_fraction > 0:
            val_groups.add(g)
            n_val += len(groups[g])
    train = [p for p in items if key(p) not in val_groups]
    val = [p for p in items if key(p) in val_groups]
    return train, val


@functools.lru_cache(maxsize=8)
def _mhh_table(csv_path: str) -> dict[str, str]:
    """image_id -> patient_id from an MHH COVID-19 data.csv."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return {row["image_id"].strip(): row["patient_id"].strip() for row in csv.DictReader(fh)}


def mhh_patient_of(path: str | Path) -> str:
    """Patient id of an MHH COVID-19 CXR (``.../mhh-covid-19/png/<image_id>.png``) from the nearest data.csv."""
    p = Path(path).resolve()
    for parent in p.parents:
        csv_path = parent / "data.csv"
        if csv_path.is_file():
            table = _mhh_table(str(csv_path))
            if p.stem not in table:
                raise ValueError(f"{path}: image id {p.stem!r} is not listed in {csv_path}")
            return table[p.stem]
    raise ValueError(f"{path}: no data.csv (MHH COVID-19 metadata) in any parent folder")


# --------------------------------------------------------------------------------------------- dataset


def random_jitter_params(
    gen: torch.Generator | None = None,
    max_shift: float = 0.03,
    max_scale: float = 0.05,
    max_rot_deg: float = 3.0,
    max_gamma: float = 0.1,
) -> dict[str, float]:
    """Small flip-free jitter: shift (fraction of side), zoom, rotation, gamma. Radiographs have handedness."""
    u = torch.rand(5, generator=gen).double() * 2 - 1
    return {
        "dx": float(u[0]) * max_shift * 2,  # normalised coords span 2
        "dy": float(u[1]) * max_shift * 2,
        "scale": 1.0 + float(u[2]) * max_scale,
        "rot": math.radians(float(u[3]) * max_rot_deg),
        "gamma": math.exp(float(u[4]) * max_gamma),
    }


def apply_jitter(x: torch.Tensor, p: dict[str, float]) -> torch.Tensor:
    """Apply ``random_jitter_params`` to (..., H, W) in [-1, 1]; resolution-independent, so LQ/HQ stay aligned."""
    shape = x.shape
    t = x.reshape(-1, 1, *shape[-2:]).float()
    c, s = math.cos(p["rot"]) / p["scale"], math.sin(p["rot"]) / p["scale"]
    theta = torch.tensor([[c, -s, p["dx"]], [s, c, p["dy"]]], dtype=t.dtype).expand(t.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = ((out + 1) / 2).clamp(0, 1) ** p["gamma"] * 2 - 1
    return out.reshape(shape)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Radiographs as (1, size, size) tensors in [-1, 1]; preprocessed arrays are cached in memory.

    Args:
        paths: image files (see ``list_images``).
        cfg: preprocessing settings.
        augment: apply small random flip-free jitter (shift/zoom/rotation/gamma) on every access.
        prewindowed: the files are already windowed (pairs folders): map [0, 1] linearly to [-1, 1] instead of
            applying the percentile window of ``cfg`` again.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        cfg: PreprocessConfig | None = None,
        augment: bool = False,
        prewindowed: bool = False,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("ImageFolderDataset: no images given")
        self.cfg = cfg or PreprocessConfig()
        self.augment = augment
        self.prewindowed = prewindowed
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def array(self, i: int) -> np.ndarray:
        """Preprocessed (size, size) float32 array in [-1, 1] (cached, no augmentation)."""
        if i not in self._cache:
            img = load_grayscale(self.paths[i])
            self._cache[i] = (
                prewindowed_image(img, self.cfg.size) if self.prewindowed else preprocess_image(img, self.cfg)
            )
        return self._cache[i]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(self.array(i).copy())[None]
        if self.augment:
            x = apply_jitter(x, random_jitter_params())
        return x
