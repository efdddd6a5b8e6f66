"""A tiny, randomly initialised DDPMHQPipeline saved to a folder: stands in for the packaged model in tests."""

from __future__ import annotations

from pathlib import Path

import pytest


def save_tiny_restorer(folder: Path, lq_size: int = 32, seed: int = 0) -> Path:
    """Save an untrained 2x restorer (space_to_depth 2, two 8/16-channel levels, no attention, 2 of 4 steps)."""
    import torch

    from restoration.ddpm_hq import DDPMHQConfig, build_unet
    from restoration.pipeline_ddpm_hq import save_pipeline

    cfg = DDPMHQConfig(
        lq_size=lq_size, scale=2, space_to_depth=2, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, num_train_timesteps=50,
    )  # fmt: skip
    torch.manual_seed(seed)
    return save_pipeline(folder, build_unet(cfg).eval(), cfg, num_inference_steps=4, strength=0.5)


def use_as_packaged(monkeypatch: pytest.MonkeyPatch, folder: Path | None) -> None:
    """Make ``folder`` the model this install ships (None: an install without one)."""
    import pipeline.enhancer

    monkeypatch.setattr(pipeline.enhancer, "packaged_model", lambda: folder)
