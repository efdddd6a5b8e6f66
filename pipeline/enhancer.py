"""The restoration step inside ``generate --enhance``: DDPM-HQ restores and 2x super-resolves each DRR.

Labels follow the image: boxes and footprints are scaled by the model's factor (footprints by pixel replication,
so a footprint pixel stays a footprint pixel). The raw DRR is kept under ``images_drr/``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.records import NoduleLabel


@dataclass(frozen=True)
class EnhanceConfig:
    """How DRRs are restored in ``generate``.

    Args:
        model_dir: a trained DDPM-HQ folder (``diffusionxray train ddpm-hq``); nothing is ever downloaded.
        steps: sampler steps.
        scheduler: ddpm, ddim or dpmsolver++.
        weights_sha256: checksum of the model weights (filled in on load; part of the run's fingerprint).
    """

    model_dir: str
    steps: int = 50
    scheduler: str = "ddim"
    weights_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


class Enhancer:
    """Loads DDPM-HQ once and restores uint16 DRRs deterministically (seeded per image)."""

    def __init__(self, config: EnhanceConfig, device: str = "cpu") -> None:
        from restoration.ddpm_hq import WEIGHTS_NAME, load_model, make_scheduler
        from restoration.preprocess import PreprocessConfig

        self.unet, self.model_config = load_model(config.model_dir, device=device)
        digest = hashlib.sha256((Path(config.model_dir) / WEIGHTS_NAME).read_bytes()).hexdigest()
        self.config = EnhanceConfig(config.model_dir, config.steps, config.scheduler, digest)
        self.scheduler = make_scheduler(config.scheduler, self.model_config)
        pre = self.model_config.preprocess
        self.preprocess = PreprocessConfig.from_dict(pre) if pre else PreprocessConfig()
        self.scale = int(self.model_config.scale)
        self.device = device

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """Restore a uint16 DRR; returns a uint16 image ``scale`` times larger."""
        from restoration.enhance import enhance_image

        img01 = pixels.astype(np.float32) / 65535.0
        out = enhance_image(
            img01, self.unet, self.scheduler, self.preprocess, self.config.steps, self.scale,
            self.model_config.hq_size, 32, seed, self.device, residual_scale=self.model_config.residual_scale,
        )
        return np.rint(out * 65535.0).astype(np.uint16)

    def scale_label(self, label: NoduleLabel) -> NoduleLabel:
        """The same nodule on the enhanced image: box × scale, footprint replicated."""
        s = self.scale
        x, y, w, h = label.bbox_xywh
        footprint = None if label.footprint is None else np.kron(label.footprint, np.ones((s, s), bool))
        attrs = {**label.attributes, "drr_bbox_xywh": list(label.bbox_xywh)}
        return NoduleLabel(label.nodule_id, (x * s, y * s, w * s, h * s), footprint, label.category, attrs)
