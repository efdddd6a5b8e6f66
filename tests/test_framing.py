"""Framing: detector placed from the lungs, field collimated to what the CT covers, both lungs required."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA
from ct_projection.framing import (
    APEX_MARGIN_MM,
    check_both_lungs,
    collimation_field,
    coverage_notes,
    covered_box_world,
)
from ct_projection.geometry import ProjectionGeometry, base_pose, get_pose_params
from ct_projection.render import DRRRenderer
from ct_projection.volume import CTInputError, CTVolume
from data.records import bbox_from_mask

SIZE = 128


def chest(lungs: tuple[float, ...] = (-0.4, 0.4), k_centre: float = 0.05, k_semi: float = 0.8) -> CTVolume:
    """Body with lungs (at the given x centres), 4 mm voxels, RAS+ affine."""
    shape = (72, 56, 48)
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    hu[(i / 0.9) ** 2 + (j / 0.8) ** 2 <= 1] = 40.0
    for side in lungs:
        hu[((i - side) / 0.28) ** 2 + (j / 0.45) ** 2 + ((k - k_centre) / k_semi) ** 2 <= 1] = -850.0
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-142.0, -110.0, -94.0]
    return CTVolume(hu + np.random.default_rng(0).normal(0, 10, shape).astype(np.float32), affine, source="chest.nii")


def test_field_lies_inside_the_covered_slab_and_nearly_fills_it() -> None:
    """A water block filling the whole grid: exposed rays cross all of it, and the field is not needlessly small."""
    shape = (60, 40, 30)  # 240 x 160 x 120 mm: shorter than the detector along z, so rows above/below are cut
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) * 2.0
    vol = CTVolume(np.zeros(shape, np.float32), affine)
    geometry = ProjectionGeometry(size_px=SIZE, detector_mm=300.0, jitter_rotation_deg=3.0, jitter_translation_mm=5.0)
    renderer = DRRRenderer(vol, geometry, isocentre_world=np.zeros(3), device="cpu", body_only=False)
    covered = covered_box_world(vol, None)
    for pose in (base_pose(geometry), get_pose_params(np.random.default_rng(3), geometry)):
        raw = renderer.render(pose)
        full = raw >= 0.97 * raw.max()  # rays that crossed the whole 160 mm depth
        exposed = collimation_field(renderer, pose, covered).weight(SIZE) >= 0.5
        assert exposed.any() and not exposed.all()
        assert full[exposed].all()  # no ray through the slab's top/bottom/sides (its box edge) is exposed
        assert exposed.sum() >= 0.8 * full.sum()


def test_coverage_notes_and_both_lungs() -> None:
    from ct_projection.lungs import lung_mask

    vol = chest()
    assert coverage_notes(vol, lung_mask(vol)) == []
    check_both_lungs(vol, lung_mask(vol))
    cut = chest(k_centre=0.5, k_semi=0.6)  # lungs run into the top slice
    assert "lung apices cut" in " ".join(coverage_notes(cut, lung_mask(cut)))
    one = chest(lungs=(-0.4,))
    with pytest.raises(CTInputError, match=r"chest.nii: .*does not cover both lungs"):
        check_both_lungs(one, lung_mask(one))


def test_pipeline_refuses_a_one_lung_ct(tmp_path) -> None:
    from pipeline.config import GenerateConfig
    from pipeline.sample import SampleContext

    one = chest(lungs=(0.4,))
    with pytest.raises(CTInputError, match="does not cover both lungs"):
        SampleContext.build(one, GenerateConfig(images_per_ct=1, geometry=ProjectionGeometry(size_px=32)), "x", "cpu")


def _check_framed(vol: CTVolume, size: int = SIZE) -> None:
    """Both lungs inside the exposed field, apices ~5 cm below the top, boxes contain footprints, outside white."""
    from pipeline.config import GenerateConfig
    from pipeline.sample import SampleContext, make_sample

    config = GenerateConfig(images_per_ct=1, geometry=ProjectionGeometry(size_px=size), write_nodule_free=False)
    context = SampleContext.build(vol, config, "t", device="cpu")
    sample = make_sample(context, 0)
    lung_field = context.lung_field.mask(context.renderer, sample.pose)  # before clipping to the field
    exposed = context.lung_field.mask(context.renderer, sample.pose) & (sample.masks["lung_field"])
    rows, cols = np.flatnonzero(lung_field.any(1)), np.flatnonzero(lung_field.any(0))
    assert rows.min() > 0 and rows.max() < size - 1 and cols.min() > 0 and cols.max() < size - 1
    pixel = config.geometry.pixel_mm
    if not context.coverage:  # apices not cut by the CT: the radiographer's 5 cm margin
        assert rows.min() * pixel == pytest.approx(APEX_MARGIN_MM, abs=4 * pixel + 6.0)
        assert exposed.sum() >= 0.95 * lung_field.sum()
    # both lungs: lung pixels on both sides of the image's centre line
    assert lung_field[:, : size // 2].sum() > 0.2 * lung_field.sum() < lung_field[:, size // 2 :].sum() * 5
    x, y, w, h = sample.attributes["collimation"]["field_xywh"]
    outside = np.ones((size, size), bool)
    outside[max(0, int(np.floor(y)) - 3) : int(np.ceil(y + h)) + 3, max(0, int(np.floor(x)) - 3) : int(np.ceil(x + w)) + 3] = False
    physical = sample.images.get("physical", sample.images["image"])  # before the clinical display, if any
    assert physical[outside].min() >= 0.95 * 65535  # unexposed: collimator leaves
    for label in sample.labels:
        bx, by, bw, bh = label.bbox_xywh
        fx, fy, fw, fh = bbox_from_mask(label.footprint)
        assert bx <= fx and by <= fy and fx + fw <= bx + bw and fy + fh <= by + bh


def test_example_ct_is_framed() -> None:
    from ct_projection.ingest import load_example_ct

    _check_framed(load_example_ct())


@pytest.mark.slow  # real thick-slice CTs: interpolation and lung segmentation of 512 x 512 x 250 voxels
@pytest.mark.parametrize("patient", ["Lung_Dx-A0001", "Lung_Dx-A0002"])
def test_shared_cts_are_framed(patient: str) -> None:
    folder = SHARED_DATA / "ct" / "lung-pet-ct-dx" / patient
    if not folder.is_dir():
        pytest.skip("shared Lung-PET-CT-Dx CTs not present")
    from pipeline.generate import load_input

    vol, _ = load_input(str(folder))
    _check_framed(vol, size=64)
