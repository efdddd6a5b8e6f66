"""Tests for ct_projection.nodules on a small synthetic chest phantom (fast: tiny grid, few nodules)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from ct_projection.nodules import (
    LOBE_NAMES,
    NoduleConfig,
    NoduleConfigError,
    NoduleParams,
    NodulePlacementError,
    NodulePlacementWarning,
    NoduleSampler,
    insert_nodules,
    nodule_surface_points,
)
from ct_projection.volume import CTVolume

LUNG_NOISE_SD = 30.0
# Small nodules so they fit the phantom's ~36 mm wide lungs.
SMALL = dict(diameter_range_mm=(4.0, 10.0), diameter_median_mm=7.0)


class Phantom:
    """A 112×88×40 chest: body, two lungs with noise, a vessel tube and a tumour blob in the right lung."""

    def __init__(self, seed: int = 0) -> None:
        shape = (112, 88, 40)
        rng = np.random.default_rng(seed)
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
        affine[:3, 3] = (-44.3, -31.7, 87.5)
        i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
        # Diagonal affine: world = spacing * index + origin; coordinates relative to the grid centre.
        centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
        x = 0.8 * i + affine[0, 3] - centre[0]
        y = 0.8 * j + affine[1, 3] - centre[1]
        z = 2.5 * k + affine[2, 3] - centre[2]
        hu = np.full(shape, -1000.0, dtype=np.float32)
        body = (x / 43) ** 2 + (y / 34) ** 2 <= 1
        hu[body] = 40 + rng.normal(0, 15, body.sum())
        # RAS+: +x is the patient's right.
        right = ((x - 20) / 18) ** 2 + (y / 25) ** 2 + (z / 45) ** 2 <= 1
        left = ((x + 20) / 18) ** 2 + (y / 25) ** 2 + (z / 45) ** 2 <= 1
        self.lung = right | left
        hu[self.lung] = -850 + rng.normal(0, LUNG_NOISE_SD, self.lung.sum())
        self.vessel = right & ((x - 27) ** 2 + (y + 8) ** 2 <= 2.5**2)
        self.tumour = right & ((x - 15) ** 2 + (y - 9) ** 2 + (z - 10) ** 2 <= 6.0**2)
        for m in (self.vessel, self.tumour):
            hu[m] = 40 + rng.normal(0, 15, m.sum())
        self.lobes = np.zeros(shape, dtype=np.int16)
        self.lobes[left & (z > 0)] = 10
        self.lobes[left & (z <= 0)] = 11
        self.lobes[right & (z > 10)] = 12
        self.lobes[right & (z <= 10) & (y > 0)] = 13
        self.lobes[right & (z <= 10) & (y <= 0)] = 14
        self.vol = CTVolume(hu, affine, source="phantom")
        # Non-lung voxel centres, to measure how close a nodule's surface comes to the pleura.
        self.outside_tree = cKDTree(self.vol.voxel_to_world(np.argwhere(~self.lung)))


@pytest.fixture(scope="module")
def ph() -> Phantom:
    return Phantom()


def _full(vol: CTVolume, n) -> np.ndarray:
    """A nodule's occupancy on the whole grid."""
    out = np.zeros(vol.shape, dtype=np.float32)
    out[n.slices] = n.occupancy
    return out


def _sphere_params(vol: CTVolume, centre_voxel: list[float], diameter: float, **kw) -> NoduleParams:
    c = [float(v) for v in np.asarray(centre_voxel, dtype=np.float64)]
    return NoduleParams(
        centre_world_mm=vol.voxel_to_world(np.array(c))[0].tolist(),
        centre_voxel=c,
        diameter_mm=diameter,
        axes_mm=[diameter] * 3,
        rotation=np.eye(3).tolist(),
        **kw,
    )


def test_params_deterministic(ph: Phantom) -> None:
    s = NoduleSampler(NoduleConfig(**SMALL))
    a = [p.to_dict() for p in s.get_params(np.random.default_rng(7), ph.vol, ph.lung, ph.lobes)]
    b = [p.to_dict() for p in s.get_params(np.random.default_rng(7), ph.vol, ph.lung, ph.lobes)]
    c = [p.to_dict() for p in s.get_params(np.random.default_rng(8), ph.vol, ph.lung, ph.lobes)]
    assert a and a == b
    assert a != c
    # A fresh sampler with an explicit placement map gives the same draws as the cached one.
    s2 = NoduleSampler(NoduleConfig(**SMALL))
    pm = s2.prepare(ph.vol, ph.lung)
    assert [p.to_dict() for p in s2.get_params(np.random.default_rng(7), ph.vol, ph.lung, ph.lobes, pm)] == a


def test_insertion_byte_identical(ph: Phantom) -> None:
    s = NoduleSampler(NoduleConfig(**SMALL, count_range=(3, 3), shape_probs={"spiculated": 1, "lobulated": 1}))
    _, ins1 = insert_nodules(ph.vol, s.get_params(np.random.default_rng(3), ph.vol, ph.lung))
    _, ins2 = insert_nodules(ph.vol, s.get_params(np.random.default_rng(3), ph.vol, ph.lung))
    assert len(ins1) == len(ins2) > 0
    for a, b in zip(ins1, ins2):
        assert a.offset == b.offset
        assert a.delta_hu.tobytes() == b.delta_hu.tobytes()
        assert a.occupancy.tobytes() == b.occupancy.tobytes()


def test_placement_inside_lung_and_clear_of_structures(ph: Phantom) -> None:
    cfg = NoduleConfig(**SMALL, count_range=(3, 3), juxtapleural_prob=0.3)
    s = NoduleSampler(cfg)
    n_total, sides = 0, set()
    for seed in range(8):
        params = s.get_params(np.random.default_rng(seed), ph.vol, ph.lung, ph.lobes)
        _, ins = insert_nodules(ph.vol, params)
        occs = [_full(ph.vol, n) > 0 for n in ins]
        for n, occ in zip(ins, occs):
            p = n.params
            assert occ.any()
            assert ph.lung[occ].all(), "nodule (incl. spicules and rim) leaves the lung"
            assert not (occ & ph.vessel).any() and not (occ & ph.tumour).any()
            lab = int(ph.lobes[tuple(int(round(v)) for v in p.centre_voxel)])
            assert p.lobe == LOBE_NAMES[lab] and p.side == ("left" if lab in (10, 11) else "right")
            sides.add(p.side)
            # Surface points (incl. spicule tips) fall inside the reported world box (up to the sampling of the
            # analytic surface: the box uses its own point set).
            pts = nodule_surface_points(p, 300)
            lo, hi = np.array(n.box_world_mm)
            assert (pts >= lo - 0.1).all() and (pts <= hi + 0.1).all()
        for a in range(len(ins)):
            for b in range(a + 1, len(ins)):
                assert not (occs[a] & occs[b]).any()
                pa, pb = ins[a].params, ins[b].params
                dist = np.linalg.norm(np.subtract(pa.centre_world_mm, pb.centre_world_mm))
                assert dist >= pa.max_extent_mm + pb.max_extent_mm + cfg.margin_mm
        n_total += len(ins)
    assert n_total >= 16 and sides == {"left", "right"}


def test_placement_check_is_what_avoids_the_tumour(ph: Phantom) -> None:
    """Negative control: with the tissue checks switched off, nodules do land on the tumour/vessel."""
    cfg = NoduleConfig(**SMALL, count_range=(3, 3), parenchyma_min_fraction=0.0, dense_min_size_mm=20.0)
    s = NoduleSampler(cfg)
    hits = 0
    for seed in range(12):
        _, ins = insert_nodules(ph.vol, s.get_params(np.random.default_rng(seed), ph.vol, ph.lung), supersample=1)
        hits += sum(bool(((_full(ph.vol, n) > 0) & (ph.vessel | ph.tumour)).any()) for n in ins)
    assert hits > 0


@pytest.mark.parametrize(
    ("ntype", "lo", "hi"), [("solid", -10.0, 100.0), ("ground_glass", -750.0, -300.0), ("part_solid", -10.0, 100.0)]
)
def test_mean_hu_in_type_range(ph: Phantom, ntype: str, lo: float, hi: float) -> None:
    cfg = NoduleConfig(diameter_range_mm=(9.0, 10.0), count_range=(2, 2), type_probs={ntype: 1.0},
                       shape_probs={"sphere": 1.0}, juxtapleural_prob=0.0, core_fraction_range=(0.6, 0.7))
    params = NoduleSampler(cfg).get_params(np.random.default_rng(1), ph.vol, ph.lung)
    new, ins = insert_nodules(ph.vol, params)
    assert len(ins) == 2
    tol = LUNG_NOISE_SD  # ≥ 3 standard errors of a mean over ≥ ~10 core voxels with noise sd 30
    for n in ins:
        p = n.params
        sub = new.hu[n.slices]
        if ntype == "part_solid":
            assert n.core_occupancy is not None
            core = n.core_occupancy > 0.99
            halo = (n.occupancy > 0.99) & (n.core_occupancy == 0)
            assert core.sum() >= 5 and halo.sum() >= 5
            assert lo - tol <= sub[core].mean() <= hi + tol
            assert abs(sub[core].mean() - p.hu_solid) < tol
            assert -750 - tol <= sub[halo].mean() <= -300 + tol
            assert abs(sub[halo].mean() - p.hu_ggo) < tol
        else:
            assert n.core_occupancy is None
            assert lo - tol <= n.core_mean_hu <= hi + tol
            assert abs(n.core_mean_hu - p.hu_target) < tol
        # The recorded mean HU is the nodule material's (in the type's range); a CT ROI over the partial-volume
        # rim reads lower, pulled towards lung, never past the material.
        # (part-solid: between its ground-glass halo and its solid core)
        assert (-750.0 if ntype == "part_solid" else lo) - tol <= n.mean_hu <= hi + tol
        assert n.mean_hu_partial_volume < n.mean_hu
        if ntype != "part_solid":
            assert abs(n.mean_hu - p.hu_target) < tol


def test_noise_texture_kept(ph: Phantom) -> None:
    c = ph.vol.world_to_voxel(np.array([[20.0 + ph.vol.center_world()[0], -10.0, ph.vol.center_world()[2] - 15]]))[0]
    p = _sphere_params(ph.vol, c.tolist(), 10.0, hu_solid=50.0)
    new, (n,) = insert_nodules(ph.vol, [p])
    core = n.occupancy > 0.99
    resid = new.hu[n.slices][core] - 50.0
    assert core.sum() > 30
    assert 0.6 * LUNG_NOISE_SD < resid.std() < 1.4 * LUNG_NOISE_SD
    assert abs(resid.mean()) < 15
    assert abs(n.local_lung_mean_hu - (-850)) < 10


@pytest.mark.parametrize("dz", [0.0, 0.5])
def test_partial_volume_small_sphere(ph: Phantom, dz: float) -> None:
    """A 6 mm sphere on 2.5 mm slices keeps a fully occupied voxel and its analytic volume, whatever its phase."""
    c = [84.3, 44.6, 20.0 + dz]
    p = _sphere_params(ph.vol, c, 6.0)
    _, (n,) = insert_nodules(ph.vol, [p])
    assert n.occupancy.max() > 0.9
    analytic = np.pi / 6 * 6.0**3
    assert abs(n.volume_mm3 - analytic) / analytic < 0.1
    assert abs(n.diameter_measured_mm - 6.0) < 0.3


def test_sphere_volumes_match_ellipsoid(ph: Phantom) -> None:
    cfg = NoduleConfig(**SMALL, count_range=(3, 3), shape_probs={"sphere": 1.0})
    s = NoduleSampler(cfg)
    seen = 0
    for seed in range(3):
        _, ins = insert_nodules(ph.vol, s.get_params(np.random.default_rng(seed), ph.vol, ph.lung))
        for n in ins:
            analytic = np.pi / 6 * float(np.prod(n.params.axes_mm))
            assert abs(n.volume_mm3 - analytic) / analytic < 0.1
            assert abs(max(n.params.axes_mm) - n.params.diameter_mm) < 1e-9
            seen += 1
    assert seen >= 6


def test_diameter_distribution() -> None:
    from ct_projection.size_presets import size_preset

    rng = np.random.default_rng(0)
    # Default = the node21 preset: NODE21's 6–30 mm, median 17 mm, sizes up to 30 mm present.
    s = NoduleSampler()
    assert NoduleConfig() == NoduleConfig(**size_preset("node21"))
    d = np.array([s.sample_diameter(rng) for _ in range(4000)])
    assert d.min() >= 6.0 and d.max() <= 30.0
    assert 16.0 < np.median(d) < 18.0 and (d > 25).mean() > 0.05 and (d < 10).mean() > 0.03
    # lidc: the fit of the 251 LUNA16 patches (5–46 mm, median 13, geometric mean 14.7)
    d = np.array([NoduleSampler(NoduleConfig(**size_preset("lidc"))).sample_diameter(rng) for _ in range(4000)])
    assert d.min() >= 5.0 and d.max() <= 46.0 and 13.5 < np.median(d) < 16.0 and (d > 30).any()
    small = NoduleSampler(NoduleConfig(**size_preset("small")))
    d = np.array([small.sample_diameter(rng) for _ in range(4000)])
    assert d.min() >= 3.0 and d.max() <= 30.0 and ((d >= 6) & (d <= 15)).mean() > 0.7
    # Smaller re-draws respect the cap; other distributions stay in range.
    assert all(small.sample_diameter(rng, upper_mm=5.0) <= 5.0 for _ in range(200))
    for dist in ("uniform", "loguniform"):
        s2 = NoduleSampler(NoduleConfig(diameter_distribution=dist))
        d2 = np.array([s2.sample_diameter(rng) for _ in range(500)])
        assert d2.min() >= 6.0 and d2.max() <= 30.0
    with pytest.raises(ValueError, match="--size-preset.*node21, lidc, small"):
        size_preset("huge")


def test_input_not_modified(ph: Phantom) -> None:
    hu0, lung0, lobes0 = ph.vol.hu.copy(), ph.lung.copy(), ph.lobes.copy()
    s = NoduleSampler(NoduleConfig(**SMALL, count_range=(2, 2)))
    new, ins = s.apply(np.random.default_rng(5), ph.vol, ph.lung, ph.lobes)
    assert np.array_equal(ph.vol.hu, hu0) and np.array_equal(ph.lung, lung0) and np.array_equal(ph.lobes, lobes0)
    assert new.hu is not ph.vol.hu and not np.array_equal(new.hu, hu0)
    # delta_hu is exactly new − old inside each box, and zero where occupancy is zero.
    diff = new.hu - hu0
    for n in ins:
        np.testing.assert_allclose(diff[n.slices], n.delta_hu, atol=1e-3)
        assert not n.delta_hu[n.occupancy == 0].any()
        assert n.occupancy.min() >= 0 and n.occupancy.max() <= 1
    covered = np.zeros(ph.vol.shape, dtype=bool)
    for n in ins:
        covered[n.slices] = True
    assert not diff[~covered].any()


def test_config_validation() -> None:
    with pytest.raises(NoduleConfigError, match="unknown type 'x': expected one of solid, part_solid, ground_glass"):
        NoduleConfig(type_probs={"x": 1.0})
    with pytest.raises(NoduleConfigError, match="expected one of sphere, lobulated, spiculated"):
        NoduleConfig(shape_probs={"cube": 1.0})
    with pytest.raises(NoduleConfigError, match="expected one of lognormal, uniform, loguniform"):
        NoduleConfig(diameter_distribution="gamma")
    with pytest.raises(NoduleConfigError, match="expected one of warn, raise"):
        NoduleConfig(on_failure="ignore")
    with pytest.raises(NoduleConfigError, match="min 30.0 > max 3.0"):
        NoduleConfig(diameter_range_mm=(30, 3))
    with pytest.raises(NoduleConfigError, match="non-negative"):
        NoduleConfig(type_probs={"solid": -1.0})
    with pytest.raises(NoduleConfigError, match=r"juxtapleural_prob: value 1.5 outside the allowed range \[0.0, 1.0\]"):
        NoduleConfig(juxtapleural_prob=1.5)
    with pytest.raises(NoduleConfigError, match="unknown nodules field 'colour': expected one of count_range"):
        NoduleConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        NoduleParams([0, 0, 0], [0, 0, 0], 5.0, [5, 5, 5], np.eye(3).tolist(), shape="blob")


def test_json_round_trip(ph: Phantom) -> None:
    cfg = NoduleConfig(**SMALL, count_range=(3, 3), type_probs={"part_solid": 1, "solid": 1},
                       shape_probs={"spiculated": 1, "lobulated": 1})
    back = NoduleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    params = NoduleSampler(cfg).get_params(np.random.default_rng(2), ph.vol, ph.lung, ph.lobes)
    _, ins = insert_nodules(ph.vol, params)
    for p, n in zip(params, ins):
        d = json.loads(json.dumps(p.to_dict()))
        assert NoduleParams.from_dict(d) == p
        assert d["max_extent_mm"] == pytest.approx(p.max_extent_mm)
        meta = json.loads(json.dumps(n.to_dict()))
        assert meta["offset"] == list(n.offset) and meta["box_shape"] == list(n.delta_hu.shape)
    # Re-inserting from round-tripped params reproduces the deltas exactly.
    _, again = insert_nodules(ph.vol, [NoduleParams.from_dict(json.loads(json.dumps(p.to_dict()))) for p in params])
    assert all(a.delta_hu.tobytes() == b.delta_hu.tobytes() for a, b in zip(ins, again))


@pytest.mark.parametrize("shape", ["sphere", "lobulated", "spiculated"])
def test_surface_points_on_half_occupancy(ph: Phantom, shape: str) -> None:
    cfg = NoduleConfig(diameter_range_mm=(7.0, 10.0), count_range=(2, 2), shape_probs={shape: 1.0})
    params = NoduleSampler(cfg).get_params(np.random.default_rng(4), ph.vol, ph.lung)
    _, ins = insert_nodules(ph.vol, params)
    assert ins
    for n in ins:
        full = _full(ph.vol, n)
        pts = nodule_surface_points(n.params, 400, include_spicules=False)
        ijk = ph.vol.world_to_voxel(pts)
        nearest = full[tuple(np.rint(ijk).astype(int).T)]
        interp = ndimage.map_coordinates(full, ijk.T, order=1)
        assert ((nearest > 0.2) & (nearest < 0.8)).mean() > 0.5
        assert ((interp > 0.2) & (interp < 0.8)).mean() > 0.9
        if shape == "spiculated":
            tips = nodule_surface_points(n.params, 0)
            assert len(tips) == 25 * len(n.params.spicule_directions)
            # Spicule tips: just outside the body, within the nodule's maximum extent.
            r = np.linalg.norm(tips - np.array(n.params.centre_world_mm), axis=1)
            assert r.max() == pytest.approx(n.params.max_extent_mm, rel=1e-6)


def _gap_to_pleura(ph: Phantom, p: NoduleParams) -> float:
    """Smallest distance (mm) from the nodule's surface (incl. spicule tips) to a non-lung voxel centre."""
    return float(ph.outside_tree.query(nodule_surface_points(p, 2048))[0].min())


def test_juxtapleural_touches_pleura(ph: Phantom) -> None:
    half_diag = 0.5 * float(np.linalg.norm(ph.vol.spacing))
    cfg = NoduleConfig(**SMALL, count_range=(2, 2), juxtapleural_prob=1.0,
                       shape_probs={"sphere": 1, "lobulated": 1, "spiculated": 1})
    s = NoduleSampler(cfg)
    seen = 0
    for seed in range(4):
        _, ins = insert_nodules(ph.vol, s.get_params(np.random.default_rng(seed), ph.vol, ph.lung))
        for n in ins:
            occ = _full(ph.vol, n) > 0
            assert n.params.juxtapleural
            assert ph.lung[occ].all()
            # Touching: its farthest point is within one band (1 mm) of the cell-safe distance to the pleura.
            assert _gap_to_pleura(ph, n.params) <= half_diag + 1.0 + 1e-3
            seen += 1
    assert seen >= 6
    # Interior nodules keep the margin.
    params = NoduleSampler(NoduleConfig(**SMALL, count_range=(3, 3), juxtapleural_prob=0.0)).get_params(
        np.random.default_rng(0), ph.vol, ph.lung)
    assert params
    for p in params:
        assert _gap_to_pleura(ph, p) >= half_diag + 2.0 - 1e-6


def test_unplaceable_nodule_warns_or_raises(ph: Phantom) -> None:
    big = dict(diameter_range_mm=(28.0, 30.0), diameter_median_mm=29.0, count_range=(1, 1), max_size_retries=1)
    with pytest.warns(NodulePlacementWarning, match="no position inside the lung fits it"):
        assert NoduleSampler(NoduleConfig(**big)).get_params(np.random.default_rng(0), ph.vol, ph.lung) == []
    with pytest.raises(NodulePlacementError, match="no position inside the lung fits it"):
        NoduleSampler(NoduleConfig(**big, on_failure="raise")).get_params(np.random.default_rng(0), ph.vol, ph.lung)
    # A range that allows shrinking: the re-draw is smaller and fits.
    shrink = dict(big, diameter_range_mm=(5.0, 30.0), max_size_retries=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (p,) = NoduleSampler(NoduleConfig(**shrink)).get_params(np.random.default_rng(0), ph.vol, ph.lung)
    assert p.diameter_mm < 20.0


def test_side_without_lobes(ph: Phantom) -> None:
    params = NoduleSampler(NoduleConfig(**SMALL, count_range=(3, 3))).get_params(
        np.random.default_rng(9), ph.vol, ph.lung)
    mid = ph.vol.center_world()[0]
    for p in params:
        assert p.lobe is None
        assert p.side == ("right" if p.centre_world_mm[0] > mid else "left")
    # Editing a param changes the insertion (params fully determine the result).
    p2 = replace(params[0], hu_solid=(params[0].hu_solid or 0) + 50, hu_ggo=(params[0].hu_ggo or -600) + 50)
    _, (a,) = insert_nodules(ph.vol, params[:1])
    _, (b,) = insert_nodules(ph.vol, [p2])
    assert not np.array_equal(a.delta_hu, b.delta_hu)


def test_oblique_grid(ph: Phantom) -> None:
    """A rotated voxel grid: placement stays inside the lung and sphere volumes stay analytic."""
    th = 0.3
    aff = ph.vol.affine.copy()
    aff[:3, :3] = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]]) @ aff[:3, :3]
    vol = CTVolume(ph.vol.hu, aff)
    cfg = NoduleConfig(**SMALL, count_range=(3, 3), shape_probs={"sphere": 1.0}, juxtapleural_prob=0.3)
    params = NoduleSampler(cfg).get_params(np.random.default_rng(0), vol, ph.lung)
    _, ins = insert_nodules(vol, params)
    assert len(ins) == 3
    for n in ins:
        occ = _full(vol, n) > 0
        assert ph.lung[occ].all() and not (occ & (ph.vessel | ph.tumour)).any()
        analytic = np.pi / 6 * float(np.prod(n.params.axes_mm))
        assert abs(n.volume_mm3 - analytic) / analytic < 0.1
        np.testing.assert_allclose(vol.voxel_to_world(np.array(n.params.centre_voxel))[0], n.params.centre_world_mm)


def test_nodule_deltas_match_insert_nodules(ph: Phantom) -> None:
    """The copy-free path gives the same sub-boxes and statistics as inserting into a volume copy."""
    from ct_projection.nodules import nodule_deltas

    cfg = NoduleConfig(**SMALL, count_range=(3, 3))
    params = NoduleSampler(cfg).get_params(np.random.default_rng(4), ph.vol, ph.lung)
    new, inserted = insert_nodules(ph.vol, params)
    deltas = nodule_deltas(ph.vol, params)
    assert len(deltas) == len(inserted) == 3
    for a, b in zip(inserted, deltas):
        assert a.offset == b.offset
        np.testing.assert_array_equal(a.delta_hu, b.delta_hu)
        assert (a.mean_hu, a.mean_hu_partial_volume, a.volume_mm3) == (b.mean_hu, b.mean_hu_partial_volume, b.volume_mm3)
        np.testing.assert_array_equal(new.hu[a.slices], ph.vol.hu[a.slices] + a.delta_hu)


def test_zone_is_the_third_of_the_lung_height(ph: Phantom) -> None:
    """Every nodule gets its radiographic zone from its centre's height within its own lung."""
    from ct_projection.nodules.placement import _zone

    assert [_zone(z, (0.0, 90.0)) for z in (5.0, 45.0, 85.0)] == ["lower", "middle", "upper"]
    assert _zone(1.0, None) is None
    sampler = NoduleSampler(NoduleConfig(**SMALL, count_range=(3, 3)))
    pm = sampler.prepare(ph.vol, ph.lung)
    assert set(pm.lung_z) == {"left", "right"}
    zones = set()
    for seed in range(8):
        for p in sampler.get_params(np.random.default_rng(seed), ph.vol, ph.lung):
            lo, hi = pm.lung_z[p.side]
            frac = (p.centre_world_mm[2] - lo) / (hi - lo)
            assert 0.0 <= frac <= 1.0
            assert p.zone == ("upper" if frac >= 2 / 3 else "lower" if frac < 1 / 3 else "middle")
            zones.add(p.zone)
    assert zones == {"upper", "middle", "lower"}


def test_rotations_are_proper_and_align_turns_a_onto_b() -> None:
    """scipy-backed helpers: random rotations are proper and seeded; _align maps a onto b, also for opposite vectors."""
    from ct_projection.nodules.placement import _align, _random_rotation

    rng = np.random.default_rng(3)
    mats = [_random_rotation(np.random.default_rng(s)) for s in (1, 1, 2)]
    np.testing.assert_array_equal(mats[0], mats[1])
    assert not np.allclose(mats[0], mats[2])
    for _ in range(20):
        a, b = rng.normal(size=3), rng.normal(size=3)
        for target in (b, -a, a):
            r = _align(a, target)
            np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
            assert np.linalg.det(r) == pytest.approx(1.0)
            np.testing.assert_allclose(r @ (a / np.linalg.norm(a)), target / np.linalg.norm(target), atol=1e-9)
    # The minimal rotation: the axis a x b is left unchanged.
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(_align(a, b) @ np.array([0.0, 0.0, 1.0]), [0.0, 0.0, 1.0], atol=1e-12)
