"""Options and --config fields are validated before any CT is read: one line naming the option or field and what is
allowed, a non-zero exit, no traceback, no output folder; a dataset's config.json fed back reproduces its settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data.settings import SettingsError, load_settings
from pipeline.cli import app
from pipeline.config import GenerateConfig, read_generate_config_file

# (options, words the one error line must hold: the option or field named, and the allowed range or type)
BAD_OPTIONS = {
    "size-0": (["--size", "0"], ["--size", ">= 8"]),
    "size-huge": (["--size", "100000"], ["--size", "<= 8192"]),
    "n-0": (["-n", "0"], ["--images-per-ct/-n", ">= 1"]),
    "seed-negative": (["--seed", "-1"], ["--seed", ">= 0"]),
    "sdd-nan": (["--sdd-mm", "nan"], ["--sdd-mm", "finite"]),
    "sdd-below-object-distance": (["--sdd-mm", "100"], ["--sdd-mm", "object_detector_mm"]),
    "jitter-negative": (["--jitter-deg", "-1"], ["--jitter-deg", ">= 0"]),
    "detector-zero": (["--detector-mm", "0"], ["--detector-mm", "> 0"]),
    "workers-0": (["--workers", "0"], ["--workers", ">= 1"]),
    "nodules-max-huge": (["--nodules-max", "1000"], ["--nodules-min/--nodules-max", "[0, 50]"]),
    "diameter-max-huge": (["--diameter-max", "300"], ["--diameter-min/--diameter-max", "100.0]"]),
    "val-fraction-1": (["--val-fraction", "1"], ["--val-fraction", "< 1"]),
    "jitter-huge": (["--jitter-deg", "90"], ["--jitter-deg", "<= 45"]),
    "enhance-steps-0": (["--enhance", "no-such-model", "--enhance-steps", "0"], ["--enhance-steps", ">= 1"]),
    "enhance-scheduler": (["--enhance", "no-such-model", "--enhance-scheduler", "euler"], ["--enhance-scheduler", "ddim"]),
}

# --config contents → words the error line must hold (the file is named too)
BAD_CONFIGS = {
    "size-as-string": ({"geometry": {"size_px": "64"}}, ["geometry.size_px", "valid integer"]),
    "images-fractional": ({"images_per_ct": 1.5}, ["images_per_ct", "valid integer"]),
    "images-zero": ({"images_per_ct": 0}, ["images_per_ct", ">= 1"]),
    "seed-negative": ({"seed": -3}, ["seed", ">= 0"]),
    "count-range-string": ({"nodules": {"count_range": "1-3"}}, ["nodules.count_range", "valid array"]),
    "chord-bool": ({"labels": {"min_chord_mm": True}}, ["labels.min_chord_mm", "valid number"]),
    "probs-not-numbers": ({"nodules": {"type_probs": {"solid": "most"}}}, ["nodules.type_probs.solid", "valid number"]),
    "unknown-top-level": ({"imagse_per_ct": 2}, ["'imagse_per_ct'", "images_per_ct, seed"]),
    "unknown-in-section": ({"attenuation": {"l_maxx": 9}}, ["'l_maxx'", "l_max"]),
    "attenuation-negative": ({"attenuation": {"l_max": -1}}, ["attenuation.l_max", "> 0"]),
    "write-nodule-free-string": ({"write_nodule_free": "no"}, ["write_nodule_free", "valid boolean"]),
}


def _one_error_line(result: object, out: Path) -> str:
    """The run failed with exactly one ``error:`` line, no traceback, and left no output folder."""
    output = result.output  # type: ignore[attr-defined]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0, output  # type: ignore[attr-defined]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert not os.path.lexists(out), f"{out} was created by a refused run"
    return errors[0]


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_option_is_one_line_before_any_ct_is_read(case: str, chest_nifti: Path, tmp_path: Path) -> None:
    args, words = BAD_OPTIONS[case]
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(out), "--no-progress", *args])
    line = _one_error_line(result, out)
    assert all(w in line for w in words), line
    assert str(chest_nifti) not in line, f"an error about the run blames the CT: {line}"


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_field_is_one_line_naming_file_and_field(case: str, chest_nifti: Path, tmp_path: Path) -> None:
    data, words = BAD_CONFIGS[case]
    config = tmp_path / "run.json"
    config.write_text(json.dumps(data))
    out = tmp_path / "o"
    args = ["generate", str(chest_nifti), "--out", str(out), "--no-progress", "--config", str(config)]
    line = _one_error_line(CliRunner().invoke(app, args), out)
    assert str(config) in line and all(w in line for w in words), line
    assert str(chest_nifti) not in line, line


def test_overlong_out_name_is_one_line(chest_nifti: Path, tmp_path: Path) -> None:
    out = tmp_path / ("x" * 300)
    result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(out), "--no-progress"])
    line = _one_error_line(result, out)
    assert "--out" in line and "255" in line, line


def test_out_that_is_a_file_is_one_line(chest_nifti: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.write_text("a user's file")
    result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(out), "--no-progress"])
    assert result.exit_code != 0 and "--out" in result.output and "not a folder" in result.output, result.output
    assert out.read_text() == "a user's file"


def test_config_sets_run_fields_and_options_override(chest_nifti: Path, tmp_path: Path) -> None:
    """images_per_ct and seed come from --config unless typed; the saved config.json records what was used."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"images_per_ct": 1, "seed": 7, "geometry": {"size_px": 48}, "dicom": False}))
    out = tmp_path / "ds"
    args = ["generate", str(chest_nifti), "--out", str(out), "--no-progress", "--device", "cpu", "--config",
            str(config), "--seed", "8"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["images_per_ct"] == 1 and saved["seed"] == 8 and saved["geometry"]["size_px"] == 48
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 1


def test_dataset_config_round_trip_reproduces_fingerprint(chest_nifti: Path, tmp_path: Path) -> None:
    """A dataset's config.json fed back via --config gives a run with the same settings fingerprint (and file)."""
    first = tmp_path / "first"
    args = ["generate", str(chest_nifti), "--out", str(first), "--no-progress", "--device", "cpu", "-n", "1",
            "--size", "40", "--seed", "5", "--view", "AP", "--nodules-max", "2", "--diameter-min", "12", "--types",
            "solid=0.7,ground_glass=0.3", "--shapes", "sphere", "--jitter-mm", "3", "--no-nodule-free",
            "--alias", "case-7"]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    second = tmp_path / "second"
    again = ["generate", str(chest_nifti), "--out", str(second), "--no-progress", "--device", "cpu", "--config",
             str(first / "config.json")]  # fmt: skip
    result = CliRunner().invoke(app, again)
    assert result.exit_code == 0, result.output
    assert (second / "config.json").read_text() == (first / "config.json").read_text()
    prints = [json.loads(p.read_text().splitlines()[0])["config_fingerprint"] for p in
              (first / "manifest.jsonl", second / "manifest.jsonl")]  # fmt: skip
    assert prints[0] == prints[1]


def test_every_saved_field_is_accepted(tmp_path: Path) -> None:
    """Every key GenerateConfig.to_dict writes reads back to the same config (a hashed series UID is ignored)."""
    config = GenerateConfig(images_per_ct=3, seed=11, dicom=True, alias="a", aliases={"0" * 64: "b"}, series_uid="42")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    data, notes = read_generate_config_file(path)
    assert set(data) == set(config.to_dict()) and not notes
    assert load_settings(GenerateConfig, data).fingerprint() == config.fingerprint()
    hashed = GenerateConfig(series_uid="1.2.840.99.1")
    path.write_text(json.dumps(hashed.to_dict()))
    data, notes = read_generate_config_file(path)
    assert "series_uid" not in data and len(notes) == 1 and "series_uid" in notes[0]


def test_settings_errors_are_one_line_with_field_value_and_range() -> None:
    from ct_projection.geometry import ProjectionGeometry

    with pytest.raises(SettingsError) as err:
        load_settings(ProjectionGeometry, {"size_px": 4}, source="cfg.json", section="geometry")
    assert str(err.value) == "cfg.json: geometry.size_px = 4: must be >= 8"
    assert err.value.loc == "geometry.size_px"
    with pytest.raises(SettingsError, match=r"unknown ProjectionGeometry field 'sizepx': expected one of view, sdd_mm"):
        load_settings(ProjectionGeometry, {"sizepx": 64})
    with pytest.raises(SettingsError, match=r"^jitter_rotation_deg = nan: must be a finite number$"):
        load_settings(ProjectionGeometry, {"jitter_rotation_deg": float("nan")})


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--size", "abc"], ["'--size'", "valid integer"]),
        (["-n", "1.5"], ["'-n'", "valid integer"]),
        (["--sise", "64"], ["No such option: --sise", "--size"]),
    ],
)
def test_unparsable_option_is_one_line(args: list[str], words: list[str], chest_nifti: Path, tmp_path: Path) -> None:
    """Values click cannot even parse get the same one-line form as every other error (not a usage block)."""
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["generate", str(chest_nifti), "--out", str(out), *args])
    line = _one_error_line(result, out)
    assert all(w in line for w in words) and "--help" in line, line
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_saved_form_is_canonical() -> None:
    """Configs are saved one way (data.settings): the same settings typed as 1500 or 1500.0 save and fingerprint
    identically, and what is saved reads back to an equal config."""
    from ct_projection.geometry import ProjectionGeometry

    as_int = GenerateConfig(geometry=ProjectionGeometry(size_px=64, sdd_mm=1500, jitter_rotation_deg=0))
    as_float = GenerateConfig(geometry=ProjectionGeometry(size_px=64, sdd_mm=1500.0, jitter_rotation_deg=0.0))
    assert as_int.to_dict() == as_float.to_dict() and as_int.fingerprint() == as_float.fingerprint()
    back = load_settings(GenerateConfig, json.loads(json.dumps(as_int.to_dict())))
    assert back == as_float and back.fingerprint() == as_int.fingerprint()
