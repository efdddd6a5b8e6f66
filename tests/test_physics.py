"""X-ray physics against references: NIST attenuation, analytic slabs, Poisson noise, scatter energy, noise twins."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ct_projection.physics.acquisition import Acquisition, NoiseFields, PhysicsConfig
from ct_projection.physics.detector import DetectorConfig, detector_efficiency, mtf
from ct_projection.physics.materials import CORTICAL_BONE_DENSITY, MaterialBasis, mass_attenuation
from ct_projection.physics.polychromatic import reference_line_integral
from ct_projection.physics.scatter import ScatterConfig, scatter_kernel, scatter_signal
from ct_projection.physics.spectrum import SpectrumConfig, tube_spectrum

# NIST X-ray mass attenuation coefficients (Hubbell & Seltzer, NISTIR 5632), μ/ρ at 60 keV in cm²/g.
NIST_WATER_60KEV = 0.2059
NIST_CORTICAL_BONE_60KEV = 0.3148

IDEAL_DETECTOR = DetectorConfig(mtf_sigma_mm=0.0, pixel_aperture=False, electronic_noise_quanta=0.0)
NO_SCATTER = ScatterConfig(enabled=False)


def _paths(water_cm: np.ndarray | float, bone_g_cm2: np.ndarray | float = 0.0, shape: tuple = (1, 1)) -> np.ndarray:
    """Material line integrals (2, H, W) in g/cm² for water (1 g/cm³, so cm = g/cm²) and bone."""
    w = np.broadcast_to(np.asarray(water_cm, dtype=np.float32), shape)
    b = np.broadcast_to(np.asarray(bone_g_cm2, dtype=np.float32), shape)
    return np.stack([w, b]).astype(np.float32)


@pytest.mark.parametrize(("material", "nist"), [("water", NIST_WATER_60KEV), ("bone", NIST_CORTICAL_BONE_60KEV)])
def test_mass_attenuation_matches_nist_at_60kev(material: str, nist: float) -> None:
    assert mass_attenuation(material, 60.0)[0] == pytest.approx(nist, rel=0.02)


def test_material_basis_splits_hu_into_water_and_bone() -> None:
    basis = MaterialBasis()
    rho = basis.decompose(np.array([-1000.0, -850.0, 0.0, basis.bone_hu, 2 * basis.bone_hu]))
    np.testing.assert_allclose(rho[0], [0.0, 0.15, 1.0, 0.0, 0.0], atol=1e-6)
    assert rho[1][:3].tolist() == [0.0, 0.0, 0.0]
    assert rho[1][3] == pytest.approx(CORTICAL_BONE_DENSITY, rel=1e-5)
    assert rho[1][4] > rho[1][3]  # denser than cortical bone stays bone, denser
    # The CT number of cortical bone at a 120 kVp CT's ~70 keV is ~1500–1600 HU (tabulated values of CT phantoms).
    assert 1300 < basis.bone_hu < 1800


@pytest.mark.slow
def test_spectrum_weighted_water_slab_matches_analytic_value() -> None:
    """−ln of the binned detector signal equals the 1-keV spectrum sum for water slabs (beam hardening included)."""
    config = PhysicsConfig(scatter=NO_SCATTER, detector=IDEAL_DETECTOR)
    acq = Acquisition(config, pixel_mm=1.0, sdd_mm=1800.0)
    energies, fluence = tube_spectrum(config.spectrum)
    weight = fluence * detector_efficiency(energies, config.detector) * energies
    mu = mass_attenuation("water", energies)
    thickness = np.array([0.0, 5.0, 10.0, 20.0, 30.0], np.float32)
    analytic = -np.log((weight[None] * np.exp(-mu[None] * thickness[:, None])).sum(1) / weight.sum())
    # The slab as a CT would give it: HU 0 is water at 1 g/cm³ in the basis.
    density = MaterialBasis().decompose(np.zeros(1))[:, 0]
    paths = density[:, None, None] * thickness[None, None, :]
    measured = acq.detect(paths.astype(np.float32), noise=None)[0]
    np.testing.assert_allclose(measured, analytic, rtol=5e-3, atol=1e-6)
    # Beam hardening: the effective μ falls with thickness, below μ at the lowest bin's energy.
    per_cm = measured[1:] / thickness[1:]
    assert np.all(np.diff(per_cm) < 0)
    # Chest-like water + bone mixtures are as close (rib and spine paths).
    mub = mass_attenuation("bone", energies)
    for water, bone in [(20.0, 1.0), (20.0, 3.0)]:
        exact = -np.log((weight * np.exp(-mu * water - mub * bone)).sum() / weight.sum())
        assert acq.detect(_paths(water, bone), None)[0, 0] == pytest.approx(exact, rel=5e-3)


def test_reference_line_integral_is_monoenergetic_60kev() -> None:
    assert reference_line_integral(_paths(10.0))[0, 0] == pytest.approx(10.0 * NIST_WATER_60KEV, rel=0.02)


def test_quantum_noise_variance_scales_with_signal_as_poisson() -> None:
    """Var(signal) = Σ n·E² (compound Poisson): var(L) = Var/signal², so 4x the dose gives 1/4 the variance."""
    shape = (256, 256)
    z = NoiseFields.draw(shape, np.random.SeedSequence(7))
    measured = {}
    for mas, water in [(1.0, 0.0), (4.0, 0.0), (1.0, 20.0), (4.0, 20.0)]:
        config = PhysicsConfig(spectrum=SpectrumConfig(mas=mas), scatter=NO_SCATTER, detector=IDEAL_DETECTOR)
        acq = Acquisition(config, pixel_mm=0.5, sdd_mm=1800.0)
        paths = _paths(water, 0.0, shape)
        signal, variance = acq.expected_signal(paths)
        # Poisson in quanta: variance/signal is the mean energy E[E²]/E[E] of the detected photons (keV),
        # which the harder beam behind 20 cm of water raises.
        swank = float(variance.mean() / signal.mean())
        assert acq.open_swank_kev * 0.95 < swank < acq.open_swank_kev * 1.3
        var_l = float(acq.detect(paths, z).var())
        # −ln linearises: var(L) = Var/signal² (65536 pixels: ~1% sampling error)
        assert var_l == pytest.approx(swank / float(signal.mean()), rel=0.03)
        measured[(mas, water)] = var_l
    for water in (0.0, 20.0):
        assert measured[(4.0, water)] / measured[(1.0, water)] == pytest.approx(0.25, rel=0.03)


def test_electronic_noise_adds_signal_independent_variance() -> None:
    shape = (128, 128)
    z = NoiseFields.draw(shape, np.random.SeedSequence(3))
    quiet = replace(IDEAL_DETECTOR, quantum_noise=False, electronic_noise_quanta=20.0)
    acq = Acquisition(PhysicsConfig(scatter=NO_SCATTER, detector=quiet), pixel_mm=0.5, sdd_mm=1800.0)
    image = acq.detect(_paths(15.0, 0.0, shape), z)
    signal, _ = acq.expected_signal(_paths(15.0, 0.0, shape))
    expected_std = 20.0 * acq.open_mean_kev / float(signal.mean())  # σ_L ≈ σ_signal / signal
    assert float(image.std()) == pytest.approx(expected_std, rel=0.05)


def test_scatter_kernel_conserves_energy() -> None:
    config = ScatterConfig()
    kernel = scatter_kernel(config, pixel_mm=2.0, max_px=128)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(kernel >= 0) and kernel.shape[0] % 2 == 1
    # A point of primary behind 20 cm of water: all the scatter it makes lands on a large enough detector.
    primary = np.zeros((256, 256), np.float32)
    primary[128, 128] = 1000.0
    water = np.full_like(primary, 20.0)
    scatter = scatter_signal(primary, water, config, pixel_mm=2.0)
    assert scatter.sum() == pytest.approx(1000.0 * config.spr_per_cm * 20.0, rel=1e-4)
    assert scatter[128, 128] < 0.01 * scatter.sum()  # spread broadly, not a point


def test_scatter_to_primary_ratio_and_grid() -> None:
    """Centre of a broad 20 cm water field: SPR ≈ k·τ without a grid; a grid cuts it by T_s/T_p."""
    shape = (200, 200)
    spr = {}
    for grid in (False, True):
        sc = ScatterConfig(grid=grid)
        acq = Acquisition(PhysicsConfig(scatter=sc, detector=IDEAL_DETECTOR), pixel_mm=2.0, sdd_mm=1800.0)
        with_scatter, _ = acq.expected_signal(_paths(20.0, 0.0, shape))
        primary, _ = Acquisition(
            PhysicsConfig(scatter=replace(sc, enabled=False), detector=IDEAL_DETECTOR), pixel_mm=2.0, sdd_mm=1800.0
        ).expected_signal(_paths(20.0, 0.0, shape))
        spr[grid] = float(with_scatter[100, 100] / primary[100, 100] - 1.0)
    assert spr[False] == pytest.approx(0.15 * 20.0, rel=0.1)
    assert spr[True] == pytest.approx(spr[False] * 0.1 / 0.7, rel=1e-3)


def test_nodule_free_twin_has_identical_noise() -> None:
    """Same noise fields: image − twin is the nodule's signal, zero away from it; reruns are byte-identical."""
    shape = (96, 96)
    acq = Acquisition(PhysicsConfig(), pixel_mm=1.0, sdd_mm=1800.0)
    yy, xx = np.mgrid[:96, :96]
    background = _paths(18.0 + 4.0 * np.sin(xx / 9.0), 0.6 * (np.sin(yy / 4.0) > 0.7), shape)
    nodule = np.zeros_like(background)
    inside = (yy - 48) ** 2 + (xx - 40) ** 2 < 36
    nodule[0][inside] = 0.8  # ~8 mm of soft tissue replacing air in the lung
    seed = np.random.SeedSequence(11, spawn_key=(1, 2))
    z = NoiseFields.draw(shape, seed)
    twin = acq.detect(background, z)
    image = acq.detect(background + nodule, z)
    again = NoiseFields.draw(shape, np.random.SeedSequence(11, spawn_key=(1, 2)))
    assert np.array_equal(acq.detect(background, again), twin)
    other = acq.detect(background, NoiseFields.draw(shape, np.random.SeedSequence(12)))
    noise_std = float((other - twin).std())
    diff = image - twin
    far = (yy - 48) ** 2 + (xx - 40) ** 2 > 15**2
    clean = acq.detect(background + nodule, None) - acq.detect(background, None)
    # Away from the nodule the noise cancels exactly; what is left is the nodule's (smooth, small) scatter shadow.
    assert float(np.abs(diff - clean)[far].max()) < 0.01 * noise_std
    assert float(np.abs(clean[far]).max()) < 0.2 * noise_std
    # Inside: the noise-free nodule signal plus the noise's signal dependence, a small fraction of the noise.
    assert float(diff[inside].mean()) == pytest.approx(float(clean[inside].mean()), rel=0.05)
    assert float(np.abs(diff - clean)[inside].max()) < 0.5 * noise_std


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="kvp must be within"):
        SpectrumConfig(kvp=200.0)
    with pytest.raises(ValueError, match="expected one of simple, full"):
        PhysicsConfig(mode="mono")
    with pytest.raises(ValueError, match="lobe_weights"):
        ScatterConfig(lobe_weights=(0.5, 0.6))


def test_detector_mtf_matches_csi_panel() -> None:
    assert mtf(np.array([1.0]), DetectorConfig().mtf_sigma_mm)[0] == pytest.approx(0.6, abs=0.05)
    eff = detector_efficiency(np.array([40.0, 60.0, 100.0]), DetectorConfig())
    assert np.all((eff > 0.3) & (eff <= 1.0))
