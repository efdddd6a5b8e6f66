"""The restoration step of ``generate`` and ``convert``: DDPM-HQ restores and super-resolves each DRR.

Each DRR is first resized so its longer side is the model's training ``lq_size`` (the scale at which it learned
anatomy), then restored at the model's SR factor, so the output's longer side is ``scale * lq_size`` whatever the
DRR size. Labels follow the image: boxes are scaled by the actual output/input factor per axis and footprints
resampled to the output grid (pixel replication for integer factors). The raw DRR is kept under ``images_drr/``.

The model is the one shipped inside the package unless the user names another folder (``--enhance PATH``); the run
settings record it as :data:`PACKAGED_MODEL` (not its install path, so the same command gives the same dataset on
any machine) together with a digest of its weights and configs, so a resume with another model is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from data.records import NoduleLabel

# How the run settings name the packaged model (resolved to its folder on load).
PACKAGED_MODEL = "packaged:ddpm-hq"
# Scheduler classes by the sampler names of --enhance-scheduler (restoration.ddpm_hq.make_scheduler).
SAMPLER_NAMES = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpmsolver++"}


def sampler_name(pipe: Any) -> str | None:
    """The sampler name of a pipeline's scheduler (None for a scheduler class the options do not name)."""
    return SAMPLER_NAMES.get(type(pipe.scheduler).__name__)


def packaged_model() -> Path | None:
    """The folder of the model shipped in the package, or None when this install has none."""
    from restoration.pretrained import packaged_model_dir

    return packaged_model_dir()


def resolve_model_dir(model_dir: str | Path) -> Path:
    """The folder a setting names: :data:`PACKAGED_MODEL` is the packaged model, anything else a path.

    Raises:
        ModelNotFoundError: the packaged model is asked for but this install has none (one line).
    """
    from restoration.ddpm_hq import ModelNotFoundError

    if str(model_dir) != PACKAGED_MODEL:
        return Path(model_dir)
    folder = packaged_model()
    if folder is None:
        raise ModelNotFoundError(
            "this install has no packaged restoration model (restoration/pretrained/ddpm-hq); give a trained "
            "DDPM-HQ folder with --enhance PATH (or --model PATH), or --no-enhance for raw DRRs"
        )
    return folder


def model_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The model's own files with these suffixes, sorted (training checkpoints and hidden files left out)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes
                  and not any(part.startswith((".", "checkpoint-")) for part in p.relative_to(folder).parts))  # fmt: skip


def check_model_folder(folder: Path) -> None:
    """Refuse a missing or corrupt model folder before loading it: every JSON must parse, every safetensors header
    read (missing files are the loader's to name).

    Raises:
        ModelNotFoundError: no such folder (one line with the command that trains one).
        ModelFolderError: one line naming the first bad file.
    """
    import json

    from safetensors import safe_open

    from restoration.ddpm_hq import ModelFolderError, ModelNotFoundError

    if not folder.is_dir():
        raise ModelNotFoundError(
            f"{folder}: no trained DDPM-HQ model (folder does not exist); train one with "
            f"`diffusionxray train ddpm-hq --output-dir {folder} ...` (weights are never downloaded)"
        )

    for path in model_files(folder, (".json",)):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ModelFolderError(f"{path}: not a readable JSON model config ({' '.join(str(err).split())})") from None
    for path in model_files(folder, (".safetensors",)):
        try:
            with safe_open(str(path), framework="pt"):
                pass  # the header is parsed and checked against the file's length (truncation)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for any damage
            raise ModelFolderError(f"{path}: damaged weights file ({' '.join(str(err).split())})") from None


def model_digest(folder: str | Path) -> str:
    """sha256 over a model folder's weights and configs (relative names and contents; the model card is left out)."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in model_files(root, (".safetensors", ".json", ".bin")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class EnhanceConfig:
    """How DRRs are restored in ``generate`` (part of the run's settings and fingerprint).

    Args:
        model_dir: :data:`PACKAGED_MODEL` (the model shipped in the package) or a DDPM-HQ folder; nothing is ever
            downloaded.
        steps: sampler steps; None: the model's own default (filled in on load).
        scheduler: ddpm, ddim or dpmsolver++; None: the model's own scheduler (filled in on load).
        strength: 1 starts from pure noise, below 1 from the noised bicubic upsample; None: the model's default.
        weights_sha256: digest of the model's weights and configs (filled in on load; a config that names one
            needs the same model).
        input_size: longer side DRRs are resized to before restoring (filled in on load: the model's lq_size).
    """

    model_dir: str = PACKAGED_MODEL
    steps: Annotated[int, Field(ge=1, le=1000)] | None = None
    scheduler: Literal["ddpm", "ddim", "dpmsolver++"] | None = None  # restoration.ddpm_hq.SCHEDULERS
    strength: Annotated[float, Field(gt=0, le=1)] | None = None
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
    """Loads a ``DDPMHQPipeline`` once and restores uint16 DRRs deterministically (seeded per image).

    Attributes:
        config: the settings with everything filled in (model digest, steps, scheduler, strength, input size).
        pipe: the loaded pipeline.
        scale: the model's SR factor (output side / model-input side).
        input_size: longer side each DRR is resized to before restoring (the model's ``lq_size``).
        preprocess: the model's input window (``restoration.preprocess.PreprocessConfig``).
        model_path: the folder the model was loaded from.
    """

    def __init__(self, config: EnhanceConfig, device: str = "cpu", model_path: Path | None = None) -> None:
        """Load the model ``config`` names (``model_path``: the folder it resolved to, e.g. in the Ray driver)."""
        from restoration.ddpm_hq import ModelFolderError
        from restoration.pipeline_ddpm_hq import load_pipeline

        self.model_path = Path(model_path) if model_path is not None else resolve_model_dir(config.model_dir)
        check_model_folder(self.model_path)  # names a damaged file; load_pipeline names missing ones
        digest = model_digest(self.model_path)
        if config.weights_sha256 and config.weights_sha256 != digest:
            raise ModelFolderError(
                f"{self.model_path}: not the model these settings were made with (digest "
                f"{config.weights_sha256[:12]}…, this folder {digest[:12]}…)"
            )
        self.pipe = load_pipeline(self.model_path, device=device)
        if config.scheduler is not None:
            self.pipe.set_sampler(config.scheduler)
        pc = self.pipe.config
        self.input_size = int(pc.lq_size)
        self.scale = int(pc.scale)
        self.preprocess = self.pipe.preprocess_config
        self.config = EnhanceConfig(
            config.model_dir, int(config.steps or pc.num_inference_steps), config.scheduler or sampler_name(self.pipe),
            float(config.strength or pc.strength), digest, self.input_size,
        )  # fmt: skip
        self.device = device

    def output_size(self, in_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the enhanced image of an (h, w) DRR."""
        return self.pipe.output_size((int(in_size[0]), int(in_size[1])))

    def factors(self, in_size: tuple[int, int]) -> tuple[float, float]:
        """(x, y) output/input size factors for an (h, w) DRR: multiply x/width by the first, y/height by the second."""
        oh, ow = self.output_size(in_size)
        return ow / in_size[1], oh / in_size[0]

    def restore01(self, img01: np.ndarray, seed: int) -> np.ndarray:
        """Restore a [0, 1] float image; returns float32 in [0, 1] of ``output_size(img01.shape)``."""
        import torch

        generator = torch.Generator().manual_seed(int(seed))  # CPU noise: the same draws on any device
        out = self.pipe(
            np.clip(img01, 0.0, 1.0).astype(np.float32), num_inference_steps=self.config.steps,
            strength=self.config.strength, generator=generator,
        )  # fmt: skip
        return np.asarray(out.images[0], dtype=np.float32)

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """Restore a uint16 DRR; returns a uint16 image of ``output_size(pixels.shape)``."""
        out = self.restore01(pixels.astype(np.float32) / 65535.0, seed)
        return np.rint(np.clip(out, 0.0, 1.0) * 65535.0).astype(np.uint16)

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
