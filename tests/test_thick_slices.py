"""Thick-slice CTs: PCHIP refinement along z keeps acquired slices, never overshoots, and makes spheres round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
from ct_projection.slices import pchip_along, refine_factor, refine_thick_slices
from ct_projection.volume import CTVolume


def thick_chest(slice_mm: float = 8.0) -> CTVolume:
    """A chest phantom (body, two lungs well inside it, spine) on a 1.75 mm in-plane grid with thick slices."""
    shape = (144, 112, 32)
    rng = np.random.default_rng(1)
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    hu[(i / 0.9) ** 2 + (j / 0.8) ** 2 <= 1] = 40.0
    for side in (-0.4, 0.4):
        hu[((i - side) / 0.28) ** 2 + (j / 0.45) ** 2 + ((k - 0.05) / 0.6) ** 2 <= 1] = -850.0
    hu[(i / 0.08) ** 2 + ((j + 0.6) / 0.1) ** 2 <= 1] = 700.0
    hu += rng.normal(0, 15, shape).astype(np.float32)
    affine = np.diag([1.75, 1.75, slice_mm, 1.0])
    affine[:3, 3] = [-126.0, -98.0, -124.0]
    return CTVolume(hu, affine, source="thick.nii.gz", checksum="ab" * 32)


def test_refine_factor_threshold() -> None:
    assert refine_factor(1.25) == 1 and refine_factor(1.5) == 1  # thin-slice CTs stay as they are
    assert refine_factor(2.5) == 2  # the embedded example CT: its 2.5 mm slices showed as banding
    assert refine_factor(5.0) == 4 and refine_factor(8.0) == 6


def test_pchip_keeps_slices_and_stays_in_range() -> None:
    z = np.array([-1000.0, -1000.0, 40.0, 40.0, 1200.0, -800.0], np.float32)
    a = np.tile(z, (3, 2, 1))
    out = pchip_along(a, axis=2, factor=4)
    assert out.shape == (3, 2, 21)
    assert np.array_equal(out[..., ::4], a)  # acquired slices unchanged
    assert out.min() >= -1000.0 and out.max() <= 1200.0  # monotone: no overshoot at edges
    assert np.all(out[0, 0, :5] == -1000.0)  # flat stays flat


def test_refine_updates_geometry_and_notes() -> None:
    vol = thick_chest()
    fine, note = refine_thick_slices(vol)
    assert note is not None and "8.00 mm" in note and "PCHIP" in note
    assert fine.shape == (144, 112, 31 * 5 + 1)  # target = in-plane 1.75 mm -> factor ceil(8/1.75)
    assert fine.spacing == pytest.approx([1.75, 1.75, 1.6])
    # world position of every acquired slice is unchanged
    assert np.allclose(fine.voxel_to_world(np.array([[3, 4, 10]]))[0], vol.voxel_to_world(np.array([[3, 4, 2]]))[0])
    assert fine.info["slice_interpolation"] == note
    same, none = refine_thick_slices(fine)
    assert none is None and same is fine


def _box_ratios(vol: CTVolume, out: Path) -> list[float]:
    """Box height/width of large spherical solid nodules rendered from ``vol``, over that of their true shape."""
    from ct_projection.geometry import ProjectionGeometry
    from ct_projection.nodules import NoduleConfig
    from pipeline.config import GenerateConfig
    from pipeline.generate import generate_for_ct

    config = GenerateConfig(
        images_per_ct=2,
        seed=2,
        geometry=ProjectionGeometry(size_px=192, detector_mm=320.0, jitter_rotation_deg=0.0),
        nodules=NoduleConfig.from_dict(
            {"count_range": [2, 2], "diameter_range_mm": [24.0, 28.0], "type_probs": {"solid": 1.0},
             "shape_probs": {"sphere": 1.0}}
        ),
        write_nodule_free=False,
    )  # fmt: skip
    records = generate_for_ct(vol, config, out, "thick", device="cpu", progress=False)
    # "sphere" nodules are mildly ellipsoidal and rotated: compare with the projection of their analytic surface
    out = []
    for record in records:
        for n in record.nodules:
            pw, ph = n.attributes["projected_box_xywh"][2:]
            out.append((n.bbox_xywh[3] / n.bbox_xywh[2]) / (ph / pw))
    return out


@pytest.mark.slow
def test_thick_slice_sphere_projects_square(tmp_path: Path) -> None:
    vol = thick_chest()
    fine, _ = refine_thick_slices(vol)
    ratios = _box_ratios(fine, tmp_path / "fine")
    assert len(ratios) == 4
    assert all(abs(r - 1.0) <= 0.15 for r in ratios), ratios
    coarse = _box_ratios(vol, tmp_path / "coarse")  # the same spheres on 8 mm slabs: taller than wide
    assert max(coarse) > 1.15 and np.mean(coarse) > np.mean(ratios)


def test_shared_thick_series_get_refined() -> None:
    root = SHARED_DATA / "ct" / "lung-pet-ct-dx" / "Lung_Dx-A0002"
    if not root.is_dir():
        pytest.skip("shared Lung-PET-CT-Dx CTs not present")
    from ct_projection.ingest import load_ct

    vol = load_ct(root)
    fine, note = refine_thick_slices(vol)
    assert note is not None and fine.spacing.max() <= 1.5 + 1e-6
    assert fine.hu.min() >= vol.hu.min() and fine.hu.max() <= vol.hu.max()
