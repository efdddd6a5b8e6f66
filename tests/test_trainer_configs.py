"""The three restoration trainers read, validate and name their settings the same way; their CLI options are checked
before anything is read or written (one line, non-zero exit, no traceback, no output folder)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data.settings import SettingsError
from pipeline.cli import app
from restoration.train_ddpm_hq import TrainConfig
from restoration.train_ddpm_lq import DDPMLQTrainConfig
from restoration.train_munit import MUNITTrainConfig
from restoration.training_setup import resume_checkpoint

SHARED = {
    "hq_dir", "lq_dir", "output_dir", "batch_size", "max_train_steps", "lr", "adam_beta1", "adam_beta2",
    "adam_weight_decay", "augment", "seed", "mixed_precision", "checkpointing_steps", "checkpoints_total_limit",
    "resume", "log_every", "progress",
}  # fmt: skip
REQUIRED = {MUNITTrainConfig: {"hq_dir": "h", "lq_dir": "l", "output_dir": "o"},
            DDPMLQTrainConfig: {"lq_dir": "l", "output_dir": "o"}, TrainConfig: {}}  # fmt: skip
TRAINERS = [TrainConfig, MUNITTrainConfig, DDPMLQTrainConfig]


@pytest.mark.parametrize("cls", TRAINERS, ids=lambda c: c.__name__)
def test_trainers_name_shared_settings_the_same_way(cls: type) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    assert SHARED <= names, sorted(SHARED - names)
    cfg = cls.from_dict({**REQUIRED[cls], "batch_size": 2, "lr": 3e-4, "resume": False, "progress": False, "seed": 5})
    assert (cfg.batch_size, cfg.lr, cfg.resume, cfg.progress, cfg.seed) == (2, 3e-4, False, False, 5)
    assert cls.from_dict(cfg.to_dict()) == cfg  # what a run saves reads back


@pytest.mark.parametrize("cls", TRAINERS, ids=lambda c: c.__name__)
def test_saved_configs_with_old_names_still_load(cls: type) -> None:
    old = {"train_batch_size": 3, "learning_rate": 2e-4, "beta1": 0.6, "weight_decay": 0.0, "disable_tqdm": True,
           "resume_from_checkpoint": None}  # fmt: skip
    cfg = cls.from_dict({**REQUIRED[cls], **old})
    assert (cfg.batch_size, cfg.lr, cfg.adam_beta1, cfg.adam_weight_decay) == (3, 2e-4, 0.6, 0.0)
    assert cfg.progress is False and cfg.resume is False
    assert cls.from_dict({**REQUIRED[cls], "resume_from_checkpoint": "latest"}).resume == "latest"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"batch_sise": 8}, "unknown MUNITTrainConfig field 'batch_sise': expected one of hq_dir, lq_dir"),
        ({"batch_size": "8"}, 'batch_size = "8": must be a valid integer'),
        ({"batch_size": 0}, "batch_size = 0: must be >= 1"),
        ({"lr": -1e-4}, "lr = -0.0001: must be > 0"),
        ({"seed": -1}, "seed = -1: must be >= 0"),
        ({"progress": "yes"}, 'progress = "yes": must be a valid boolean'),
        ({"model": {"dimm": 4}}, "unknown model field 'dimm': expected one of in_channels, dim"),
        ({"preprocess": {"size": 7.5}}, "preprocess.size = 7.5: must be a valid integer"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
    ],
)
def test_trainer_config_errors_are_one_line_naming_field_and_value(data: dict, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        MUNITTrainConfig.from_dict({**REQUIRED[MUNITTrainConfig], **data})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_resume_setting(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-10").mkdir()
    assert resume_checkpoint(False, tmp_path) is None
    assert resume_checkpoint(True, tmp_path) == resume_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-10"
    assert resume_checkpoint(str(tmp_path / "checkpoint-2"), tmp_path) == tmp_path / "checkpoint-2"
    with pytest.raises(ValueError, match="checkpoint folder does not exist"):
        resume_checkpoint(str(tmp_path / "checkpoint-7"), tmp_path)


BAD_RESTORATION_OPTIONS = {
    "train-model": (["train", "vae"], "'ddpm-hq', 'munit' or 'ddpm-lq'"),
    "train-steps": (["train", "munit", "--steps", "-1"], "--steps = -1: must be >= 0"),
    "train-stage": (["train", "ddpm-lq", "--stage", "3"], "--stage = 3: must be 1 or 2"),
    "train-set-type": (["train", "munit", "--set", "batch_size=big"], 'batch_size = "big": must be a valid integer'),
    "train-set-unknown": (["train", "ddpm-hq", "--set", "train_batchsize=2"], "unknown TrainConfig field 'train_batchsize'"),
    "pairs-strength": (["make-pairs", "ddpm-lq", "--strength", "1.5"], "--strength = 1.5: must be <= 1"),
    "pairs-style": (["make-pairs", "munit", "--style", "fancy"], "--style = \"fancy\": must be 'random' or 'lq-extracted'"),
    "pairs-seed": (["make-pairs", "munit", "--seed", "-2"], "--seed = -2: must be >= 0"),
    "pairs-split": (["make-pairs", "munit", "--split", "test"], "--split = \"test\": must be 'train', 'held_out' or 'all'"),
    "enhance-steps": (["enhance", "IMAGES", "--steps", "0"], "--steps = 0: must be >= 1"),
    "enhance-scheduler": (["enhance", "IMAGES", "--scheduler", "euler"], "--scheduler = \"euler\": must be 'ddpm', 'ddim'"),
    "evaluate-strength": (["evaluate", "--strength", "0"], "--strength = 0.0: must be > 0"),
    "realism-seed": (["evaluate-realism", "IMAGES", "IMAGES", "--seed", "-1"], "--seed = -1: must be >= 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_RESTORATION_OPTIONS))
def test_bad_restoration_option_is_one_line(case: str, tmp_path: Path) -> None:
    args, message = BAD_RESTORATION_OPTIONS[case]
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "out"
    places = {"train": ["--hq-dir", str(images), "--lq-dir", str(images), "-o", str(out)],
              "make-pairs": ["--model", str(tmp_path / "m"), "--hq-dir", str(images), "--out", str(out)],
              "enhance": ["--model", str(tmp_path / "m"), "--out", str(out)],
              "evaluate": ["--model", str(tmp_path / "m"), "--hq-dir", str(images), "--json", str(out / "m.json")],
              "evaluate-realism": ["--out", str(out)]}  # fmt: skip
    argv = [str(images) if a == "IMAGES" else a for a in args] + places[args[0]]
    result = CliRunner().invoke(app, argv)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert message in errors[0], errors[0]
    assert not out.exists()


def test_a_runs_saved_record_is_accepted_as_config() -> None:
    """`train --config` takes what a run saved beside its model: the settings, without the run's bookkeeping."""
    from restoration.training_setup import saved_train_config

    munit = MUNITTrainConfig.from_dict({**REQUIRED[MUNITTrainConfig], "batch_size": 2})
    fields, ignored = saved_train_config(munit.to_dict() | {"global_step": 7, "resumed_from": None})
    assert MUNITTrainConfig.from_dict(fields) == munit and ignored == ["global_step", "resumed_from"]
    lq = DDPMLQTrainConfig.from_dict({**REQUIRED[DDPMLQTrainConfig], "seed": 3})
    record = {"model": lq.model.to_dict(), "stage": 1, "global_step": 5, "train_config": lq.to_dict()}
    fields, ignored = saved_train_config(record)
    assert DDPMLQTrainConfig.from_dict(fields) == lq and ignored == ["global_step", "stage"]
    with pytest.raises(SettingsError, match="unknown MUNITTrainConfig field 'globl_step'"):
        MUNITTrainConfig.from_dict(saved_train_config(munit.to_dict() | {"globl_step": 7})[0])
