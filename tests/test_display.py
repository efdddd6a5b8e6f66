"""Clinical presentation: exact pyramid, contrast equalisation without burn-out, histogram window, settings."""

from __future__ import annotations

import numpy as np
import pytest

from ct_projection.display import (
    DisplayConfig,
    collapse,
    fit_window,
    laplacian_pyramid,
    present,
    pyramid_levels,
    to_uint16,
)


def _chest_like(size: int = 128) -> np.ndarray:
    """Log image: air border, a body, a dark lung and a bright mediastinum, faint rib stripes across both."""
    yy, xx = np.mgrid[:size, :size].astype(float)
    image = np.full((size, size), 0.02)
    body = (np.abs(xx - size / 2) < size * 0.42) & (np.abs(yy - size / 2) < size * 0.45)
    image[body] = 2.0
    image[body & (xx < size * 0.45)] = 1.2  # lung
    image[body & (xx >= size * 0.45)] = 4.0  # mediastinum
    ribs = body & (np.sin(yy / 2.5) > 0.6)
    image[ribs] += 0.08  # a faint periodic structure (rib-like), same amplitude on both sides
    return image


def _stripe_contrast(display: np.ndarray, cols: slice) -> float:
    """Mean display difference between stripe and non-stripe rows in a column band."""
    size = display.shape[0]
    yy = np.arange(size)[:, None].repeat(size, 1)
    on = np.sin(yy / 2.5) > 0.6
    rows = slice(int(size * 0.2), int(size * 0.8))
    d, m = display[rows, cols], on[rows, cols]
    return float(d[m].mean() - d[~m].mean())


def test_laplacian_pyramid_round_trips() -> None:
    image = np.random.default_rng(0).normal(size=(100, 90))
    pyramid = laplacian_pyramid(image, 4)
    assert len(pyramid) == 5
    np.testing.assert_allclose(collapse(pyramid), image, atol=1e-12)


def test_clinical_display_equalises_contrast_without_burning_out_the_mediastinum() -> None:
    log_image = _chest_like()
    raw_cfg, clin_cfg = DisplayConfig(mode="raw"), DisplayConfig()
    raw = present(log_image, raw_cfg, fit_window(log_image, raw_cfg), pixel_mm=2.0)
    clin = present(log_image, clin_cfg, fit_window(log_image, clin_cfg), pixel_mm=2.0)
    assert raw.min() >= 0 and clin.max() <= 1 and clin.dtype == np.float32
    lung, mediastinum = slice(20, 50), slice(70, 105)
    for display in (raw, clin):
        assert display[30:90, mediastinum].mean() > display[30:90, lung].mean()  # bright = attenuating
    step = {n: float(d[30:90, mediastinum].mean() - d[30:90, lung].mean()) for n, d in (("raw", raw), ("clin", clin))}
    detail = {n: _stripe_contrast(d, lung) for n, d in (("raw", raw), ("clin", clin))}
    # Fine detail gains relative to the big lung/mediastinum step (latitude reduction + band amplification) ...
    assert detail["clin"] / step["clin"] > 2.0 * detail["raw"] / step["raw"]
    # ... and the same faint structure stays visible inside the dense mediastinum (not burnt out to white).
    assert _stripe_contrast(clin, mediastinum) > 0.02
    assert float(np.percentile(clin[30:90, mediastinum], 95)) < 0.99


def test_window_ignores_air_and_is_shared_by_a_pair() -> None:
    log_image = _chest_like()
    config = DisplayConfig()
    window = fit_window(log_image, config)
    more_air = np.pad(log_image, 40, constant_values=0.02)
    assert fit_window(more_air, config) == window
    # One window for image and twin: identical inputs give identical bytes.
    assert np.array_equal(to_uint16(present(log_image, config, window, 2.0)), to_uint16(present(log_image, config, window, 2.0)))


def test_pyramid_depth_follows_physical_scale() -> None:
    assert pyramid_levels(0.84, 40.0, (512, 512)) == 6
    assert pyramid_levels(0.42, 40.0, (1024, 1024)) == 7
    assert pyramid_levels(0.84, 40.0, (32, 32)) == 3  # capped by the image size


def test_bad_display_settings_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="expected one of raw, clinical"):
        DisplayConfig(mode="film")
    with pytest.raises(ValueError, match="window_percentiles"):
        DisplayConfig(window_percentiles=(90.0, 10.0))


def test_collimated_region_takes_no_part_and_shows_unexposed() -> None:
    """Consoles process the collimated field only: what lies under the collimator changes nothing inside it."""
    log_image = _chest_like()
    valid = np.zeros(log_image.shape, dtype=bool)
    valid[8:120, 10:118] = True
    config = DisplayConfig()
    window = fit_window(log_image, config, valid)
    shutter_white, shutter_air = log_image.copy(), log_image.copy()
    shutter_white[~valid], shutter_air[~valid] = 10.0, 0.0
    a = present(shutter_white, config, window, 2.0, valid)
    b = present(shutter_air, config, window, 2.0, valid)
    np.testing.assert_array_equal(a, b)
    assert np.all(a[~valid] == 1.0)


def test_band_gains_leave_noise_and_the_finest_bands_unboosted() -> None:
    from ct_projection.display import band_gains, band_noise

    rng = np.random.default_rng(1)
    x = 0.5 + 0.01 * rng.standard_normal((128, 128))
    x[40:60, 30:100] += 0.15  # a rib-sized structure well above the noise
    pyramid = laplacian_pyramid(x, 4)
    sigma = band_noise(pyramid)
    assert sigma[0] == pytest.approx(0.01 * np.std(pyramid[0]) / np.std(0.01 * rng.standard_normal((128, 128))), rel=0.5)
    boosted = band_gains(pyramid, DisplayConfig(noise_k=0.0), pixel_mm=1.0)
    aware = band_gains(pyramid, DisplayConfig(noise_k=1.0), pixel_mm=1.0)
    noise_only = np.abs(pyramid[0]) < sigma[0]
    # Without noise awareness the power law boosts the noise most; with it, noise-level coefficients keep ~1.
    assert np.median(boosted[0][noise_only]) > 2.0
    assert np.median(aware[0][noise_only]) < 0.5 * np.median(boosted[0][noise_only])
    # Structure well above the noise still gets the power-law boost.
    strong = np.abs(pyramid[1]) > 5 * sigma[1]
    assert strong.any() and np.allclose(aware[1][strong], boosted[1][strong], rtol=0.1)
    # Bands with pixels finer than fine_mm get the linear fine_gain (<= 1), not the power law.
    fine = band_gains(pyramid, DisplayConfig(fine_mm=1.5, fine_gain=0.8), pixel_mm=1.0)
    assert fine[0] == 0.8 and not np.isscalar(fine[1])
    with pytest.raises(ValueError, match="fine_gain"):
        DisplayConfig(fine_gain=1.5)


def test_default_display_amplifies_noise_less_than_a_plain_power_law() -> None:
    # A lung and a mediastinum with quantum-like noise and no structure: the noise-aware default must leave
    # the noise (relative to the big lung/mediastinum step) well below what the plain power law makes of it.
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:128, :128]
    log_image = np.where(xx < 58, 1.2, 4.0) + 0.01 * rng.standard_normal((128, 128))
    cfg_old, cfg_new = DisplayConfig(noise_k=0.0), DisplayConfig()
    win = fit_window(log_image, cfg_new)

    def noise_to_step(d: np.ndarray) -> float:
        noise = float(np.std((d - gaussian_filter(d, 1.0))[20:108, 10:40]))
        return noise / float(d[20:108, 80:118].mean() - d[20:108, 10:40].mean())

    old, new = (present(log_image, c, win, pixel_mm=2.0) for c in (cfg_old, cfg_new))
    assert noise_to_step(new) < 0.9 * noise_to_step(old)  # measured 0.82 (seeded)
