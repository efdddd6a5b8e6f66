"""A tiny, randomly initialised DDPM-HQ restorer saved to a folder: stands in for the packaged model in tests."""

from __future__ import annotations

from pathlib import Path

import pytest


def save_tiny_restorer(folder: Path, lq_size: int = 32, seed: int = 0) -> Path:
    """Save an untrained 2x restorer (two 8/16-channel levels, no attention) that takes ``lq_size`` inputs."""
    import torch

    from restoration.ddpm_hq import DDPMHQConfig, build_unet, save_model

    cfg = DDPMHQConfig(
        lq_size=lq_size, scale=2, block_out_channels=(8, 16), layers_per_block=1, attention_levels=(False, False),
        norm_num_groups=4, num_train_timesteps=50, prediction_type="sample", residual_scale=1.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    save_model(folder, build_unet(cfg), cfg)
    return folder


def use_as_packaged(monkeypatch: pytest.MonkeyPatch, folder: Path | None) -> None:
    """Make ``folder`` the model this install ships (None: an install without one)."""
    import pipeline.enhancer

    monkeypatch.setattr(pipeline.enhancer, "packaged_model", lambda: folder)
