"""Realism measure: the five figures behave as defined on tiny synthetic sets; the CLI writes stable JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from data.images import write_png16
from restoration import realism
from restoration.two_sample import TwoSampleConfig, classifier_two_sample_test, roc_auc

from conftest import SHARED_DATA

SMALL = TwoSampleConfig(crop=16, epochs=4, crops_per_image=8, batch_size=32)


def _smooth(n: int, size: int, seed: int) -> np.ndarray:
    """Low-pass random fields windowed to [0, 1]."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return np.stack([realism.window(gaussian_filter(rng.normal(size=(size, size)), 4.0)) for _ in range(n)])


def _noisy(n: int, size: int, seed: int) -> np.ndarray:
    """The same kind of field plus strong white noise."""
    rng = np.random.default_rng(seed + 100)
    return np.stack([realism.window(x + 0.3 * rng.normal(size=x.shape)) for x in _smooth(n, size, seed)])


def test_roc_auc_matches_definition() -> None:
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert roc_auc(np.array([1.0, 3.0]), np.array([2.0, 0.0])) == 0.75


def test_identical_sets_have_zero_distances() -> None:
    a = _noisy(6, 64, 0)
    assert realism.spectrum_distance(realism.radial_spectrum(a), realism.radial_spectrum(a.copy())) == 0.0
    assert realism.histogram_distance(realism.lung_histogram(a), realism.lung_histogram(a)) == 0.0
    fine = realism.fine_detail_energy(a)
    assert np.allclose(fine / realism.fine_detail_energy(a.copy()), 1.0)


def test_noise_raises_fine_detail_and_spectrum_distance() -> None:
    smooth, noisy = _smooth(6, 64, 0), _noisy(6, 64, 0)
    assert np.median(realism.fine_detail_energy(noisy)) > 5 * np.median(realism.fine_detail_energy(smooth))
    other_smooth = _smooth(6, 64, 1)
    d_same = realism.spectrum_distance(realism.radial_spectrum(other_smooth), realism.radial_spectrum(smooth))
    d_noise = realism.spectrum_distance(realism.radial_spectrum(noisy), realism.radial_spectrum(smooth))
    assert d_same < 0.5 and d_noise > 5 * d_same


def test_background_share_counts_near_black_pixels() -> None:
    img = np.full((10, 10), 0.5, np.float32)
    img[:3] = 0.0
    assert realism.background_share(img[None])[0] == pytest.approx(0.3)
    assert realism.background_share(realism.window(img)[None])[0] == pytest.approx(0.3)


def test_lung_histogram_distance_is_the_intensity_shift() -> None:
    a = np.full((2, 64, 64), 0.25, np.float32)
    b = np.full((2, 64, 64), 0.75, np.float32)
    d = realism.histogram_distance(realism.lung_histogram(a), realism.lung_histogram(b))
    assert d == pytest.approx(0.5, abs=1.0 / realism.HIST_BINS)


@pytest.mark.slow
def test_classifier_separates_noise_from_smooth_but_not_same_distribution() -> None:
    noise_vs_smooth = classifier_two_sample_test(_noisy(16, 32, 0), _smooth(16, 32, 1), cfg=SMALL, seed=0)
    same = classifier_two_sample_test(_smooth(16, 32, 2), _smooth(16, 32, 3), cfg=SMALL, seed=0)
    assert noise_vs_smooth["auc"] > 0.95
    assert abs(same["auc"] - 0.5) < 0.25
    again = classifier_two_sample_test(_smooth(16, 32, 2), _smooth(16, 32, 3), cfg=SMALL, seed=0)
    assert again["auc"] == same["auc"]  # seeded: same seed, same answer


def test_classifier_repeats_average_independent_runs() -> None:
    tiny = dataclasses.replace(SMALL, epochs=1, crops_per_image=2)
    a, b = _smooth(6, 32, 2), _smooth(6, 32, 3)
    single = classifier_two_sample_test(a, b, cfg=tiny, seed=5)
    three = classifier_two_sample_test(a, b, cfg=dataclasses.replace(tiny, repeats=3), seed=5)
    assert three["auc_runs"][0] == single["auc"]  # repeat 0 is the single-run test of the seed
    assert three["auc"] == pytest.approx(np.mean(three["auc_runs"]))
    assert len(set(three["auc_runs"])) > 1  # the further repeats are seeded apart
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        TwoSampleConfig(repeats=0)


def test_classifier_keeps_groups_in_one_fold() -> None:
    with pytest.raises(ValueError, match="two groups"):
        classifier_two_sample_test(_smooth(4, 32, 0), _smooth(4, 32, 1), groups_a=["p"] * 4, cfg=SMALL)


def _write_set(folder: Path, stack: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(stack):
        write_png16(folder / f"img_{i:02d}.png", np.round(img * 65535).astype(np.uint16))
    return folder


@pytest.mark.slow
def test_cli_writes_report_figure_and_is_reproducible(tmp_path: Path) -> None:
    from pipeline.cli import app

    cand = _write_set(tmp_path / "cand", _noisy(8, 128, 0))
    real = _write_set(tmp_path / "real", _smooth(8, 128, 5))
    args = ["evaluate-realism", str(cand), str(real), "--size", "128", "--epochs", "1", "--seed", "3"]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "r1")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "r2")])
    assert second.exit_code == 0, second.output
    report = json.loads((tmp_path / "r1" / "realism.json").read_text())
    for part in ("candidates_vs_real", "real_vs_real"):
        assert set(report[part]) >= {"classifier_auc", "spectrum_distance", "fine_detail_ratio",
                                     "lung_histogram_distance", "background_share"}
    assert report["candidates_vs_real"]["fine_detail_ratio"] > 2.0  # noise vs smooth
    assert "img_00" not in json.dumps(report)  # no file names in the report
    assert (tmp_path / "r1" / "realism.json").read_bytes() == (tmp_path / "r2" / "realism.json").read_bytes()
    assert (tmp_path / "r1" / "realism.png").stat().st_size > 10_000


def test_cli_refuses_too_few_images(tmp_path: Path) -> None:
    from pipeline.cli import app

    cand = _write_set(tmp_path / "cand", _noisy(2, 128, 0))
    real = _write_set(tmp_path / "real", _smooth(8, 128, 5))
    result = CliRunner().invoke(app, ["evaluate-realism", str(cand), str(real), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "needs at least 4" in result.output and str(cand) in result.output
    assert "Traceback" not in result.output


def test_patient_table_reads_nih_and_mhh_metadata() -> None:
    nih = SHARED_DATA / "cxr" / "nih-chestxray14" / "images.csv"
    mhh = SHARED_DATA / "cxr" / "mhh-covid-19" / "data.csv"
    if not (nih.is_file() and mhh.is_file()):
        pytest.skip("shared real CXRs not present")
    assert realism.patient_table(nih)["00018701_000"] == "18701"
    table = realism.patient_table(mhh)
    assert len(set(table.values())) < len(table)  # several images per patient: groups matter there


def test_held_out_split_is_by_patient_and_stable() -> None:
    """The held-out part is a pure function of the patient id: no patient on both sides, order/subset invariant."""
    from restoration.splits import is_held_out, patient_of, split_real

    nih = SHARED_DATA / "cxr" / "nih-chestxray14" / "images"
    mhh = SHARED_DATA / "cxr" / "mhh-covid-19" / "png"
    if not nih.is_dir() or not mhh.is_dir():
        pytest.skip("shared CXRs not available")
    paths = sorted(nih.glob("*.png")) + sorted(mhh.glob("*.png"))
    train, held = split_real(paths)
    assert train and held and len(train) + len(held) == len(paths)
    assert not {patient_of(p) for p in train} & {patient_of(p) for p in held}
    assert 0.2 < len(held) / len(paths) < 0.5
    # a subset in another order keeps each image on its side
    sub = list(reversed(paths[::3]))
    train_s, held_s = split_real(sub)
    assert set(held_s) == set(held) & set(sub) and set(train_s) == set(train) & set(sub)
    assert is_held_out("x", 1.0) and not is_held_out("x", 0.0)


def _collimated(stack: np.ndarray, frac: float = 0.2) -> np.ndarray:
    """The images with a white (unexposed) border of ``frac`` of the side on every edge."""
    out = stack.copy()
    n = int(frac * stack.shape[1])
    out[:, :n], out[:, -n:], out[:, :, :n], out[:, :, -n:] = 1.0, 1.0, 1.0, 1.0
    return out


def test_exposed_field_finds_the_collimated_border_and_nothing_else() -> None:
    from restoration.realism_field import exposed_field, unexposed_border

    img = _smooth(1, 128, 0)[0] * 0.9
    assert not unexposed_border(img).any()  # no border: the whole image is the field
    assert exposed_field(img, 64, 4).all()
    bright = img.copy()
    bright[60:64, 60:64] = 1.0  # a bright detail inside the image is not a collimator
    assert not unexposed_border(bright).any()
    coll = _collimated(img[None], 0.2)[0]
    field = exposed_field(coll, 64, 2)
    assert not field[:15].any() and not field[:, -15:].any()  # border (13 px at 64) + margin left out
    assert field[16:48, 16:48].all()


def test_exposed_field_measures_inside_the_collimation() -> None:
    real = _noisy(6, 128, 3)
    cand = _collimated(_noisy(6, 128, 4))
    cfg = realism.RealismConfig(size=128, classifier=SMALL)
    whole = [realism.prepare(x, 128, "whole") for x in cand]
    exposed = [realism.prepare(x, 128, "exposed") for x in cand]
    a_w = np.stack([w[0] for w in whole])
    a_e, m_e = np.stack([e[0] for e in exposed]), np.stack([e[1] for e in exposed])
    ref = np.stack([realism.prepare(x, 128, "exposed")[0] for x in real])
    ratio = lambda a, m=None: np.median(realism.fine_detail_energy(a, m)) / np.median(realism.fine_detail_energy(ref))  # noqa: E731
    # The white border's edge inflates the whole-image figure; inside the field the same kind of images agree.
    assert abs(ratio(a_e, m_e) - 1.0) < 0.2
    assert abs(ratio(a_w) - 1.0) > abs(ratio(a_e, m_e) - 1.0)
    d_field = realism.spectrum_distance(realism.radial_spectrum(a_e, m_e), realism.radial_spectrum(ref))
    d_whole = realism.spectrum_distance(realism.radial_spectrum(a_w), realism.radial_spectrum(ref))
    assert d_field < 0.5 * d_whole
    assert realism.background_share(a_e, m_e).max() < 0.05
    assert cfg.field == "exposed"
    with pytest.raises(ValueError, match="--field"):
        realism.RealismConfig(field="inside")


def test_classifier_crops_stay_inside_the_field() -> None:
    from restoration.two_sample import _grid_crops, _random_crops, valid_corners

    img = np.zeros((1, 64, 64), np.float32)
    img[0, 10:50, 20:60] = 0.5
    mask = img[0] > 0
    corners = valid_corners(mask, 16)
    assert corners.sum() == (40 - 15) * (40 - 15)
    crops = _random_crops(img, 50, 16, np.random.default_rng(0), [corners])
    assert (crops == 0.5).all()
    grid = _grid_crops(img, 16, 3, [corners])
    assert grid.shape == (1, 9, 16, 16) and (grid == 0.5).all()


def test_candidates_are_grouped_by_source_ct(tmp_path: Path) -> None:
    names = [f"r1234567_{ct}_{i:04d}.png" for ct in ("ab12cd34ef56", "0123456789ab") for i in range(3)]
    paths = [tmp_path / n for n in names]
    groups, how = realism.candidate_groups(paths, tmp_path)
    assert how == "ct" and groups == ["ab12cd34ef56"] * 3 + ["0123456789ab"] * 3
    one_ct = [p for p, g in zip(paths, groups) if g == "ab12cd34ef56"]
    assert realism.candidate_groups(one_ct, tmp_path)[1] == "image"  # one CT: no fold split possible
    other = [tmp_path / f"img_{i}.png" for i in range(4)]
    assert realism.candidate_groups(other, tmp_path) == ([p.stem for p in other], "image")
