"""The restoration step inside ``generate --enhance``: DDPM-HQ restores and super-resolves each DRR.

Each DRR is first resized so its longer side is the model's training ``lq_size`` (the scale at which it learned
anatomy), then restored at the model's SR factor, so the output's longer side is ``scale * lq_size`` whatever the
DRR size. Labels follow the image: boxes are scaled by the actual output/input factor per axis and footprints
resampled to the output grid (pixel replication for integer factors). The raw DRR is kept under ``images_drr/``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from data.records import NoduleLabel


@dataclass(frozen=True)
class EnhanceConfig:
    """How DRRs are restored in ``generate``.

    Args:
        model_dir: a trained DDPM-HQ folder (``diffusionxray train ddpm-hq``); nothing is ever downloaded.
        steps: sampler steps.
        scheduler: ddpm, ddim or dpmsolver++.
        weights_sha256: checksum of the model weights (filled in on load; part of the run's fingerprint).
        input_size: longer side DRRs are resized to before restoring (filled in on load: the model's lq_size).
    """

    model_dir: str
    steps: Annotated[int, Field(ge=1, le=1000)] = 50
    scheduler: Literal["ddpm", "ddim", "dpmsolver++"] = "ddim"  # restoration.ddpm_hq.SCHEDULERS
    weights_sha256: str = ""
    input_size: Annotated[int, Field(ge=0)] = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        from data.settings import settings_dict

        return settings_dict(self)


def resample_footprint(footprint: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """A boolean mask on an ``out_hw`` grid covering the same area: pixels at least half covered by the input.

    Integer up-scaling replicates pixels exactly; a non-empty mask never resamples to an empty one (the most
    covered output pixel is kept), so a tiny nodule keeps a footprint when the image shrinks.
    """
    import torch
    import torch.nn.functional as F

    fp = np.asarray(footprint, dtype=bool)
    cover = F.adaptive_avg_pool2d(torch.from_numpy(fp.astype(np.float32))[None, None], out_hw)[0, 0].numpy()
    out = cover >= 0.5 - 1e-6
    if fp.any() and not out.any():
        out[np.unravel_index(int(np.argmax(cover)), cover.shape)] = True
    return out


class Enhancer:
    """Loads DDPM-HQ once and restores uint16 DRRs deterministically (seeded per image).

    Attributes:
        scale: the model's SR factor (output side / model-input side).
        input_size: longer side each DRR is resized to before restoring (the model's training ``lq_size``).
    """

    def __init__(self, config: EnhanceConfig, device: str = "cpu") -> None:
        from restoration.ddpm_hq import WEIGHTS_NAME, load_model, make_scheduler
        from restoration.preprocess import PreprocessConfig

        self.unet, self.model_config = load_model(config.model_dir, device=device)
        digest = hashlib.sha256((Path(config.model_dir) / WEIGHTS_NAME).read_bytes()).hexdigest()
        self.input_size = int(self.model_config.lq_size)
        self.config = EnhanceConfig(config.model_dir, config.steps, config.scheduler, digest, self.input_size)
        self.scheduler = make_scheduler(config.scheduler, self.model_config)
        pre = self.model_config.preprocess
        self.preprocess = PreprocessConfig.from_dict(pre) if pre else PreprocessConfig()
        self.scale = int(self.model_config.scale)
        self.device = device

    def output_size(self, in_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the enhanced image of an (h, w) DRR."""
        from restoration.preprocess import model_scale_size

        h, w = model_scale_size(int(in_size[0]), int(in_size[1]), self.input_size)
        return h * self.scale, w * self.scale

    def factors(self, in_size: tuple[int, int]) -> tuple[float, float]:
        """(x, y) output/input size factors for an (h, w) DRR: multiply x/width by the first, y/height by the second."""
        oh, ow = self.output_size(in_size)
        return ow / in_size[1], oh / in_size[0]

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """Restore a uint16 DRR; returns a uint16 image of ``output_size(pixels.shape)``."""
        from restoration.enhance import enhance_image

        img01 = pixels.astype(np.float32) / 65535.0
        out = enhance_image(
            img01, self.unet, self.scheduler, self.preprocess, self.config.steps, self.scale,
            self.model_config.hq_size, 32, seed, self.device, residual_scale=self.model_config.residual_scale,
            lq_size=self.input_size,
        )  # fmt: skip
        return np.rint(out * 65535.0).astype(np.uint16)

    def scale_label(
        self,
        label: NoduleLabel,
        in_size: tuple[int, int],
        out_size: tuple[int, int] | None = None,
    ) -> NoduleLabel:
        """The same nodule on the enhanced image: box scaled by the output/input factors, footprint resampled.

        Args:
            label: the nodule on the DRR.
            in_size: (h, w) of the DRR.
            out_size: (h, w) of the enhanced image; default: ``output_size(in_size)``.
        """
        oh, ow = out_size if out_size is not None else self.output_size(in_size)
        sx, sy = ow / in_size[1], oh / in_size[0]
        x, y, w, h = label.bbox_xywh
        footprint = None if label.footprint is None else resample_footprint(label.footprint, (oh, ow))
        attrs = {**label.attributes, "drr_bbox_xywh": list(label.bbox_xywh)}
        return NoduleLabel(label.nodule_id, (x * sx, y * sy, w * sx, h * sy), footprint, label.category, attrs)
