"""What the LQ degraders (MUNIT-LQ, DDPM-LQ) read: real CXRs by patient split, DRR folders, whole images at the
model's scale and random training crops of them.

Both degraders work at the LQ scale: every image is windowed at its full resolution (percentile window of the
``PreprocessConfig``), then resized so that its longer side is ``PreprocessConfig.size`` (512 at the paper's
scale), keeping the aspect ratio. Training samples random ``crop_size`` squares of these images, so a step costs
the same whatever the image size; inference runs on whole images (the networks are fully convolutional).

Crop positions are drawn in the training loop from the run's checkpointed generator (not in DataLoader workers),
so a resumed run draws the same crops as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from restoration.preprocess import (
    PreprocessConfig,
    apply_jitter,
    list_images,
    load_grayscale,
    model_scale_size,
    normalize,
    random_jitter_params,
    resize_image,
)

RealSplit = Literal["train", "held_out", "all"]
REAL_SPLITS = ("train", "held_out", "all")


def as_folders(value: str | Path | Sequence[str | Path]) -> list[Path]:
    """One folder or several as a list of paths (a config field may hold either)."""
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def images_in(folders: str | Path | Sequence[str | Path], what: str) -> list[Path]:
    """Every image under each folder (recursive, sorted); one-line ValueError naming ``what`` when none is found."""
    dirs = as_folders(folders)
    if not dirs:
        raise ValueError(f"{what}: no folder given")
    paths: list[Path] = []
    for d in dirs:
        found = list_images(d)  # raises "<d>: not a folder of images"
        if not found:
            raise ValueError(f"{what} {d}: no png/jpg/jpeg/dcm images")
        paths += found
    return sorted(set(paths))


def real_images(folders: str | Path | Sequence[str | Path], split: RealSplit, what: str = "hq_dir") -> list[Path]:
    """The real CXRs of ``folders`` in one part of the patient split (``restoration.splits.split_real``).

    Args:
        folders: real-CXR folders (NIH, MHH, ...), each with its patient table when it has one.
        split: "train" (what every trainer uses), "held_out" (measurements only) or "all".
        what: the option name for messages.
    """
    from restoration.splits import split_real

    if split not in REAL_SPLITS:
        raise ValueError(f"{what}: split must be one of {', '.join(REAL_SPLITS)}, got {split!r}")
    paths = images_in(folders, what)
    if split == "all":
        return paths
    train, held = split_real(paths)
    chosen = train if split == "train" else held
    if not chosen:
        raise ValueError(f"{what}: none of the {len(paths)} images is in the {split!r} part of the patient split")
    return chosen


def scaled_image(img01: np.ndarray, cfg: PreprocessConfig, longer_side: int | None = None) -> np.ndarray:
    """[0, 1] radiograph → windowed [-1, 1] float32 with the longer side ``longer_side`` (default ``cfg.size``).

    The window is computed at full resolution, before resizing, as for every other model input.
    """
    x = normalize(img01, cfg)
    return resize_image(x, model_scale_size(x.shape[0], x.shape[1], longer_side or cfg.size))


class ScaledImages:
    """Whole images at the model scale, loaded once and kept in memory (float32 [-1, 1], HxW each)."""

    def __init__(self, paths: Sequence[Path], cfg: PreprocessConfig) -> None:
        if not paths:
            raise ValueError("ScaledImages: no images given")
        self.paths = list(paths)
        self.cfg = cfg
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def array(self, i: int) -> np.ndarray:
        """Image ``i`` windowed and resized (cached)."""
        if i not in self._cache:
            self._cache[i] = scaled_image(load_grayscale(self.paths[i]), self.cfg)
        return self._cache[i]

    def crops(
        self, indices: Sequence[int], crop_size: int, generator: torch.Generator, augment: bool = False
    ) -> torch.Tensor:
        """(B, 1, crop, crop) random crops of images ``indices``; positions (and jitter) drawn from ``generator``."""
        out = []
        for i in indices:
            c = random_crop(self.array(int(i)), crop_size, generator)
            if augment:
                c = apply_jitter(c, random_jitter_params(generator))
            out.append(c)
        return torch.stack(out)


def random_crop(
    img: np.ndarray, size: int, generator: torch.Generator, min_std: float = 0.01, tries: int = 8
) -> torch.Tensor:
    """(C, size, size) crop of ``img`` (HxW: C = 1, or CxHxW: channels cut at one position) at a random position;
    edge-padded where a side is shorter than ``size``.

    A position whose crop is flat (std of the first channel below ``min_std``, e.g. inside a DRR's collimated
    border or a real CXR's black frame) is redrawn, up to ``tries`` draws, keeping the most varied one: instance
    norms amplify gradients by 1/sqrt(eps) per layer on exactly constant crops, which made MUNIT-LQ diverge (NaN at
    step ~5), and flat crops teach nothing.
    """
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    t = t[None] if t.ndim == 2 else t
    h, w = t.shape[-2:]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        t = F.pad(t[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")[0]
        h, w = t.shape[-2:]
    best, best_std = None, -1.0
    for _ in range(max(1, tries)):
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        crop = t[:, top : top + size, left : left + size]
        std = float(crop[0].std())
        if std > best_std:
            best, best_std = crop, std
        if std >= min_std:
            break
    assert best is not None
    return best.clone()


class IndexDataset(torch.utils.data.Dataset):
    """Image indices, each listed ``repeat`` times: the DataLoader (accelerate's sharding and seeded shuffles) picks
    images, the training loop cuts their crops."""

    def __init__(self, n: int, repeat: int = 1) -> None:
        self.n, self.repeat = n, repeat

    def __len__(self) -> int:
        return self.n * self.repeat

    def __getitem__(self, i: int) -> int:
        return i % self.n


def index_loader(n: int, batch_size: int, what: str) -> torch.utils.data.DataLoader:
    """Shuffled batches of image indices (drop_last); a folder with fewer images than a batch lists each one
    several times (different crops of one image are different samples)."""
    if n < 1:
        raise ValueError(f"{what}: no images")
    repeat = -(-batch_size // n)
    return torch.utils.data.DataLoader(IndexDataset(n, repeat), batch_size=batch_size, shuffle=True, drop_last=True)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) at the bottom/right to multiples of ``multiple``; returns it and the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
