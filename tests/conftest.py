"""Shared fixtures: a small synthetic chest CT written as NIfTI (real, non-trivial affine)."""

from __future__ import annotations

from collections.abc import Iterator

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def chest_phantom_hu(shape: tuple[int, int, int] = (72, 56, 44), seed: int = 0) -> np.ndarray:
    """RAS-ordered (i→right... as laid out by the caller's affine) chest: body, two lungs, spine, noise."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    body = (i / 0.85) ** 2 + (j / 0.75) ** 2 <= 1
    hu[body] = 40.0
    for side in (-0.42, 0.42):
        lung = ((i - side) / 0.3) ** 2 + ((j - 0.05) / 0.5) ** 2 + ((k - 0.15) / 0.75) ** 2 <= 1
        hu[lung] = -850.0
    spine = (i / 0.08) ** 2 + ((j + 0.55) / 0.1) ** 2 <= 1
    hu[spine] = 700.0
    hu += rng.normal(0, 15, shape).astype(np.float32)
    return hu


def write_chest_phantom(path: Path, seed: int = 0) -> Path:
    """Write the phantom as NIfTI with an LPS-flipped, offset affine (4 x 4 x 6 mm voxels)."""
    hu = chest_phantom_hu(seed=seed)
    affine = np.diag([-4.0, -4.0, 6.0, 1.0])  # i → patient's left, j → posterior: ingest must reorient
    affine[:3, 3] = [140.0, 110.0, -130.0]
    nib.save(nib.Nifti1Image(np.rint(hu).astype(np.int16), affine), str(path))
    return path


@pytest.fixture(scope="session")
def chest_nifti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a synthetic chest CT NIfTI shared by the pipeline tests."""
    return write_chest_phantom(tmp_path_factory.mktemp("ct") / "chest.nii.gz")


@pytest.fixture(autouse=True)
def no_packaged_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees an install without the packaged restorer unless it asks for one (``tests/restorer.py``).

    ``generate`` and ``convert`` enhance by default with the model shipped in the package; the suite's tiny renders
    test the raw DRRs unless they say otherwise. Tests running the CLI in a subprocess pass ``--no-enhance``.
    """
    import pipeline.enhancer

    monkeypatch.setattr(pipeline.enhancer, "packaged_model", lambda: None)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core box run far faster on one torch thread (no OpenMP spin-waits); restored after."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
