"""The one internal CT volume type: Hounsfield units on a RAS+ grid with a world-mm affine."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

MAX_BYTES = 2 * 1024**3  # refuse volumes whose float32 array would exceed this, before allocating
MAX_INFO_TEXT = 256  # longest string kept in CTVolume.info (it is copied into dataset.json)
MAX_INFO_ITEMS = 64  # longest list kept in CTVolume.info


class CTInputError(ValueError):
    """A CT input that cannot be used; ``str(err)`` is a one-line message naming the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def one_line_reason(exc: BaseException) -> str:
    """First meaningful line of an exception, for one-line messages."""
    text = " ".join(str(exc).split())
    return (text[:160] + "…") if len(text) > 160 else (text or type(exc).__name__)


def check_size(source: str | Path, shape: tuple[int, ...], what: str) -> None:
    """Refuse absurd sizes before allocating them."""
    nbytes = 4 * math.prod(int(s) for s in shape)
    if nbytes > MAX_BYTES:
        dims = "×".join(str(int(s)) for s in shape)
        gib = nbytes / 1024**3
        raise CTInputError(source, f"{what} {dims} voxels ({gib:.1f} GiB as float32) exceeds the 2 GiB limit")


def check_declared_shape(source: str | Path, shape: tuple[int, ...]) -> None:
    """Refuse a header's shape unless it is one 3D volume of a size that can be allocated."""
    if len(shape) < 3 or any(int(s) < 1 for s in shape[:3]):
        raise CTInputError(source, f"expected a 3D volume, got shape {tuple(int(s) for s in shape)}")
    if len(shape) > 3 and math.prod(int(s) for s in shape[3:]) != 1:
        raise CTInputError(source, f"expected a 3D volume, got a 4D series of shape {tuple(int(s) for s in shape)}")
    check_size(source, tuple(shape[:3]), "declared size")


def clean_text(value: object, limit: int = MAX_INFO_TEXT) -> str:
    """Printable one-line text of at most ``limit`` characters (control, format and other non-printable characters
    become spaces, runs of whitespace one space), for header values that end up in outputs."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clean_info(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of metadata: strings cleaned and length-limited, lists and dicts capped, NaN/Inf → None."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (bool, int)) or value is None:
        return value
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if depth > 4:
        return clean_text(repr(value))
    if isinstance(value, dict):
        items = list(value.items())[:MAX_INFO_ITEMS]
        return {clean_text(k, 64): clean_info(v, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [clean_info(v, depth + 1) for v in list(value)[:MAX_INFO_ITEMS]]
    return clean_text(value)


@dataclass
class CTVolume:
    """A chest CT in HU.

    Attributes:
        hu: float32 array (I, J, K) in Hounsfield units, axes reordered/flipped to RAS+ canonical order
            (i increases toward the patient's Right, j toward Anterior, k toward Superior).
        affine: 4x4 float64 mapping voxel index (i, j, k, 1) to RAS+ world millimetres (nibabel convention).
        source: the path the volume was read from (for messages; never written to outputs).
        checksum: sha256 of the input file bytes (or of the sorted DICOM files) — the CT's identity in outputs.
        labels: optional integer label map on the same grid (e.g. TotalSegmentator ids).
        info: non-identifying acquisition facts (modality, manufacturer, kernel, spacing, what ingest did); it is
            copied into outputs, so it is cleaned on construction (see ``clean_info``).
    """

    hu: np.ndarray
    affine: np.ndarray
    source: str = ""
    checksum: str = ""
    labels: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hu = np.asarray(self.hu, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        self.info = clean_info(self.info)
        if self.hu.ndim != 3:
            raise CTInputError(self.source or "<array>", f"expected a 3D volume, got shape {self.hu.shape}")
        if self.affine.shape != (4, 4):
            raise CTInputError(self.source or "<array>", f"affine must be 4x4, got {self.affine.shape}")
        if self.labels is not None and self.labels.shape != self.hu.shape:
            raise CTInputError(
                self.source or "<array>",
                f"label map shape {self.labels.shape} does not match CT grid {self.hu.shape}",
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size (I, J, K)."""
        return tuple(int(s) for s in self.hu.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) voxel indices to (N, 3) RAS world mm."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Map (N, 3) RAS world mm to (N, 3) fractional voxel indices."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        inv = np.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def center_world(self) -> np.ndarray:
        """World position (mm) of the grid's geometric centre."""
        return self.voxel_to_world((np.array(self.shape, dtype=np.float64) - 1) / 2)[0]

    def with_hu(self, hu: np.ndarray) -> CTVolume:
        """A copy sharing geometry and metadata with new HU values."""
        return replace(self, hu=hu, info=dict(self.info))


def sha256_files(paths: list[Path]) -> str:
    """Content checksum of one or more files (order-independent for a DICOM series)."""
    digests = sorted(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths)
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode()).hexdigest()
