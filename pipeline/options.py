"""Ranges and choices of the command-line options that are not dataset settings, checked with pydantic.

Each command's such options form a small dataclass whose field names are the options' names (``--enhance-steps``
is ``enhance_steps``); :func:`check_options` validates them before any input is read and names the option in its
one-line error. Options that set dataset settings are checked as ``GenerateConfig`` fields (pipeline.config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from pydantic import Field

from data.settings import SettingsError, load_settings

T = TypeVar("T")

Steps = Annotated[int, Field(ge=1, le=1000)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]
Scheduler = Literal["ddpm", "ddim", "dpmsolver++"]  # restoration.ddpm_hq.SCHEDULERS


@dataclass(frozen=True)
class GenerateRunOptions:
    """How ``generate`` runs (not part of the dataset's fingerprint)."""

    backend: Literal["serial", "ray"] = "serial"
    workers: Annotated[int, Field(ge=1, le=4096)] | None = None


@dataclass(frozen=True)
class EnhanceOptions:
    """``enhance`` options (None: the model's own sampler settings)."""

    steps: Steps | None = None
    scheduler: Scheduler | None = None
    strength: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: Seed = 0


@dataclass(frozen=True)
class MakePairsOptions:
    """``make-pairs`` options."""

    model: Literal["munit", "ddpm-lq"]
    seed: Seed = 0
    strength: Annotated[float, Field(ge=0, le=1)] = 0.3
    steps: Steps = 10
    style: Literal["random", "lq-extracted"] = "random"
    split: Literal["train", "held_out", "all"] = "train"


@dataclass(frozen=True)
class EvaluateOptions:
    """``evaluate`` options (each ``--sampler`` is checked by ``SamplerSpec.parse``)."""

    steps: Steps = 50
    scheduler: Scheduler = "ddim"
    strength: Annotated[float, Field(gt=0, le=1)] = 1.0


@dataclass(frozen=True)
class RealismOptions:
    """``evaluate-realism`` options (sizes and counts are checked by RealismConfig)."""

    seed: Seed = 0


@dataclass(frozen=True)
class TrainOptions:
    """``train`` options (the training settings themselves are checked as the model's TrainConfig)."""

    model: Literal["ddpm-hq", "munit", "ddpm-lq"]
    steps: Annotated[int, Field(ge=0)] | None = None
    stage: Literal[1, 2] = 1


def option_name(field_name: str) -> str:
    """``enhance_steps`` → ``--enhance-steps`` (a positional argument keeps its plain name)."""
    return field_name if field_name == "model" else "--" + field_name.replace("_", "-")


def check_options(cls: type[T], **values: object) -> T:
    """``cls`` from the options' values; a ``SettingsError`` whose one line starts with the option's name."""
    try:
        return load_settings(cls, values)
    except SettingsError as err:
        if err.loc and str(err).startswith(err.loc):
            raise SettingsError(option_name(err.loc) + str(err)[len(err.loc) :], err.loc) from None
        raise
