"""Nodule preservation metric: a restorer that keeps a nodule scores ~1, one that erases it scores ~0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from data.coco import write_coco
from data.images import write_png16
from data.records import ImageRecord, NoduleLabel
from pipeline.nodule_preservation import ERASED_BELOW, drr_in_model_space, measure, summarize
from restoration.preprocess import PreprocessConfig

PCFG = PreprocessConfig(size=32)


def make_dataset(root: Path, restorer, faint: bool = False, windowed: bool = True) -> None:
    """One 32 px 'DRR' with a bright disk and its nodule-free twin, their 64 px 'restorations' by ``restorer``,
    and the 2x footprint."""
    yy, xx = np.mgrid[:32, :32]
    rng = np.random.default_rng(0)
    free = 0.4 + 0.2 * yy / 32 + 0.01 * rng.normal(size=yy.shape)
    disk = (yy - 14) ** 2 + (xx - 18) ** 2 <= 9
    drr = free.copy()
    drr[disk] += 0.08
    for folder, img in (("images_drr", drr), ("images_drr_nodule_free", free)):
        write_png16(root / folder / "a.png", np.rint(img.clip(0, 1) * 65535).astype(np.uint16))
        restored = restorer(drr_in_model_space(img, PCFG, None, 2, windowed))
        out = "images" if folder == "images_drr" else "images_nodule_free"
        write_png16(root / out / "a.png", np.rint(restored.clip(0, 1) * 65535).astype(np.uint16))
    footprint = np.kron(disk, np.ones((2, 2), bool))
    ys, xs = np.nonzero(footprint)
    box = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))
    files = {"drr_file": "images_drr/a.png", "drr_nodule_free_file": "images_drr_nodule_free/a.png",
             "nodule_free_file": "images_nodule_free/a.png"}  # fmt: skip
    rec = ImageRecord("images/a.png", 64, 64, [NoduleLabel(1, box, footprint, attributes={"faint": faint})], files)
    write_coco(root / "annotations" / "coco.json", [rec], {"description": "test"})


def test_identity_keeps_and_smoothing_erases(tmp_path: Path) -> None:
    make_dataset(tmp_path / "kept", lambda img: img)
    (kept,) = measure(tmp_path / "kept", PCFG)
    assert kept.before > 0.05 and kept.ratio == pytest.approx(1.0, abs=1e-3)
    # against the twin: the window is per image, so the nodule shifts it slightly; the ratio is still 1
    assert kept.twin_before > 0.05 and kept.twin_ratio == pytest.approx(1.0, abs=1e-3)
    assert summarize([kept])["twin"]["non_faint_erased"] == 0

    make_dataset(tmp_path / "erased", lambda img: ndimage.median_filter(img, size=15))
    erased = summarize(measure(tmp_path / "erased", PCFG))
    assert erased["median_contrast_ratio"] < ERASED_BELOW and erased["erased_fraction"] == 1.0
    assert erased["twin"]["median_contrast_ratio"] < ERASED_BELOW
    assert erased["twin"]["non_faint_erased"] == 1 and erased["twin"]["non_faint_min_ratio"] < ERASED_BELOW


def test_anchored_restorers_are_compared_in_the_drr_intensity_scale(tmp_path: Path) -> None:
    """An anchored restorer returns the DRR's own intensities (un-windowed); compared in that scale an identity
    keeps contrast exactly, compared in the windowed scale it would seem to lose some (the window's gain)."""
    make_dataset(tmp_path, lambda img: img, windowed=False)
    (same_scale,) = measure(tmp_path, PCFG, windowed=False)
    assert same_scale.ratio == pytest.approx(1.0, abs=1e-3) and same_scale.twin_ratio == pytest.approx(1.0, abs=1e-3)
    (wrong_scale,) = measure(tmp_path, PCFG)
    assert abs(wrong_scale.ratio - 1.0) > 0.1


def test_faint_nodules_do_not_count_against_the_target(tmp_path: Path) -> None:
    make_dataset(tmp_path, lambda img: ndimage.median_filter(img, size=15), faint=True)
    summary = summarize(measure(tmp_path, PCFG))
    assert summary["faint"] == 1 and summary["twin"]["non_faint"] == 0 and summary["twin"]["non_faint_erased"] == 0
    assert summary["twin"]["non_faint_min_ratio"] is None
    assert summary["per_nodule"][0]["faint"] is True


def test_needs_raw_drrs(tmp_path: Path) -> None:
    make_dataset(tmp_path, lambda img: img)
    rec = ImageRecord("images/a.png", 64, 64, [], {})
    write_coco(tmp_path / "annotations" / "coco.json", [rec], {})
    with pytest.raises(ValueError, match="no raw DRR"):
        measure(tmp_path, PCFG)
