"""generate with the full X-ray physics and the clinical display: exact labels, identical twin noise, recorded settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ct_projection.attenuation import AttenuationModel
from ct_projection.geometry import ProjectionGeometry
from ct_projection.nodules import NoduleConfig
from pipeline.config import GenerateConfig
from pipeline.generate import generate

SIZE = 96


def physics_config(seed: int = 0) -> GenerateConfig:
    """Defaults (full physics, clinical display) at a small detector with visible solid spheres."""
    return GenerateConfig(
        images_per_ct=2,
        seed=seed,
        geometry=ProjectionGeometry(size_px=SIZE),
        nodules=NoduleConfig(
            count_range=(1, 2), diameter_range_mm=(14.0, 22.0), type_probs={"solid": 1.0}, shape_probs={"sphere": 1.0}
        ),
    )


@pytest.fixture(scope="module")
def dataset(chest_nifti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = physics_config()
    assert config.physics.mode == "full" and config.display.mode == "clinical"  # the defaults
    out = tmp_path_factory.mktemp("phys")
    result = generate([str(chest_nifti)], out, config, device="cpu", progress=False)
    assert len(result.records) == 2 and not result.failed
    return out


def _records(dataset: Path) -> list:
    from data.records import ImageRecord

    return [ImageRecord.from_json(json.loads(line)["record"]) for line in (dataset / "manifest.jsonl").read_text().splitlines()]


def test_labels_stay_exact_under_full_physics(dataset: Path) -> None:
    """Box = footprint's tight box, and within 2 px of the projected 3D surface (as in simple mode)."""
    records = _records(dataset)
    assert sum(len(r.nodules) for r in records) >= 2
    for rec in records:
        for n in rec.nodules:
            x, y, w, h = n.bbox_xywh
            rows, cols = np.nonzero(n.footprint)
            assert (cols.min(), rows.min(), cols.max() + 1 - x, rows.max() + 1 - y) == (x, y, w, h)
            px, py, pw, ph = n.attributes["projected_box_xywh"]
            assert abs(px - x) <= 2 and abs(py - y) <= 2 and abs(px + pw - x - w) <= 2 and abs(py + ph - y - h) <= 2


def test_physical_twin_differs_only_at_the_nodules(dataset: Path) -> None:
    """images_physical: image − twin is the nodules' signal; elsewhere the shared noise cancels (tests/test_physics.py
    measures the cancellation against the noise itself)."""
    from data.images import read_png16

    model = AttenuationModel()
    for rec in _records(dataset):
        image = model.from_uint16(read_png16(dataset / rec.attributes["physical_file"]))
        twin = model.from_uint16(read_png16(dataset / rec.attributes["physical_nodule_free_file"]))
        diff = image - twin
        union = np.zeros(diff.shape, dtype=bool)
        for n in rec.nodules:
            x, y, w, h = (int(v) for v in n.bbox_xywh)
            union[max(y - 3, 0) : y + h + 3, max(x - 3, 0) : x + w + 3] = True
        for u in rec.attributes["unlabelled_nodules"]:  # sub-threshold nodules still attenuate: leave them out
            if "centre_px" in u:
                union |= _disc(diff.shape, u["centre_px"], 12)
        outside = float(np.abs(diff[~union]).max())
        # Outside the nodules only their smooth scatter shadow and 16-bit quantisation remain.
        assert outside < 2e-3
        for n in rec.nodules:
            assert diff[n.footprint].mean() > max(0.02, 10 * outside)


def test_clinical_images_and_settings_are_recorded(dataset: Path) -> None:
    from data.images import read_png16

    config = json.loads((dataset / "config.json").read_text())
    assert config["physics"]["mode"] == "full" and config["physics"]["spectrum"]["kvp"] == 120.0
    assert config["display"]["mode"] == "clinical"
    for rec in _records(dataset):
        assert rec.attributes["physics"] == "full" and rec.attributes["display"] == "clinical"
        lo, hi = rec.attributes["display_window"]["lo"], rec.attributes["display_window"]["hi"]
        assert 0 < lo < hi
        shown = read_png16(dataset / rec.file_name)
        physical = read_png16(dataset / rec.attributes["physical_file"])
        assert shown.shape == physical.shape and not np.array_equal(shown, physical)
        assert shown.max() > 60000 and shown.min() < 5000  # the tone curve spans the display range


def test_full_physics_is_deterministic(chest_nifti: Path, tmp_path: Path, dataset: Path) -> None:
    """Same seed, same bytes (noise from the sample's own seed stream); another seed, other noise."""
    out = tmp_path / "again"
    generate([str(chest_nifti)], out, physics_config(), device="cpu", progress=False)
    for rec in _records(dataset):
        for key in ("file_name", "physical_file"):
            name = getattr(rec, key) if key == "file_name" else rec.attributes[key]
            assert (out / name).read_bytes() == (dataset / name).read_bytes()


def _disc(shape: tuple[int, int], centre: list[float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--physics", "film"], "error: --physics: physics.mode: unknown physics mode 'film': expected one of simple, full"),
        (["--display", "film"], "error: --display: display.mode: unknown display mode 'film': expected one of raw, clinical"),
        (["--kvp", "300"], "error: --kvp: physics.spectrum.kvp must be within 30..150 kV"),
        (["--mas", "0"], "error: --mas: physics.spectrum.mas must be > 0"),
    ],
)
def test_bad_physics_options_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["generate", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert not (tmp_path / "o").exists()


def test_display_is_reproducible_from_the_stored_physical_image(dataset: Path) -> None:
    """benchmarks/tune_display.py re-presents stored physical images: with the default settings, byte for byte."""
    import sys

    from ct_projection.display import to_uint16
    from data.images import read_png16

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from tune_display import load_physical, present_all

    records = _records(dataset)
    samples = load_physical([dataset])
    assert [s[0] for s in samples] == [rec.attributes["ct"] for rec in records]
    for rec, again in zip(records, present_all(samples, {})):
        assert np.array_equal(to_uint16(again), read_png16(dataset / rec.file_name))
    darker = present_all(samples, {"latitude": 0.2})  # another setting: another image from the same physics
    assert not np.array_equal(to_uint16(darker[0]), read_png16(dataset / records[0].file_name))
