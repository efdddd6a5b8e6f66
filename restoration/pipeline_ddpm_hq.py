"""``DDPMHQPipeline``: DDPM-HQ as a diffusers pipeline (UNet + scheduler, config carrying scale and preprocessing).

A standard diffusers folder: ``model_index.json`` (components and this pipeline's config: lq_size, scale,
space_to_depth, residual_scale, prediction_type, preprocess, default steps/strength), ``unet/``, ``scheduler/``.
Model (``restoration/ddpm_hq.py``) and sampling loop (``restoration/ddpm_hq_sampling.restore``) stay separate;
``__call__`` only windows/resizes inputs the way the model was trained and runs ``restore``.

Load folders with ``load_pipeline`` (local files only, one-line errors for missing or corrupt folders; also
reads the older single-folder format written by ``ddpm_hq.save_model``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from restoration.ddpm_hq import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    DDPMHQConfig,
    ModelFolderError,
    ModelNotFoundError,
    load_model,
    make_scheduler,
    space_to_depth_of,
    upsample_condition,
)
from restoration.ddpm_hq_sampling import restore
from restoration.low_frequency_anchor import anchored_output, unwindow
from restoration.preprocess import PreprocessConfig, model_scale_size, normalize, percentile_window, resize_image

MODEL_INDEX = "model_index.json"
DEFAULT_SAMPLER = "ddim"
# <= 4 UNet evaluations: the residual starts at 0 + noise at t = strength * T and runs the last
# round(steps * strength) steps of a `steps`-step schedule (set per model in its config after measuring)
DEFAULT_STEPS = 8
DEFAULT_STRENGTH = 0.5
SAMPLER_NAMES = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpmsolver++"}


@dataclass
class DDPMHQPipelineOutput(BaseOutput):
    """Restored images: float32 (H, W) arrays in [0, 1] (``output_type="np"``) or tensors (``"pt"``)."""

    images: list[np.ndarray] | list[torch.Tensor]


def model_input(img01: np.ndarray, pcfg: PreprocessConfig, lq_size: int | None) -> np.ndarray:
    """[0, 1] HxW image -> the model's LQ input in [-1, 1]: percentile window, then longer side ``lq_size``.

    Args:
        img01: image in [0, 1].
        pcfg: the model's preprocessing (its percentile window).
        lq_size: the model's LQ side; None keeps the native size.
    """
    lq = normalize(img01, pcfg)  # window at full resolution, as in training
    if lq_size is None:
        return lq
    return resize_image(lq, model_scale_size(*lq.shape, lq_size))


def conditioning_image(
    img01: np.ndarray, pcfg: PreprocessConfig, lq_size: int | None, scale: int, windowed: bool = True
) -> np.ndarray:
    """The image as the restorer sees it, at output size, in [0, 1]: ``model_input`` bicubic-upsampled by ``scale``.

    Compare restored outputs with this (e.g. nodule contrast before vs after restoration).

    Args:
        windowed: True: in the model's windowed space (outputs of an unanchored pipeline); False: back in the
            input's intensity scale (outputs of a pipeline with ``anchor_sigma`` > 0).
    """
    lq = torch.from_numpy(model_input(img01, pcfg, lq_size))[None, None]
    up = ((upsample_condition(lq, scale)[0, 0].numpy().astype(np.float64) + 1.0) / 2.0).clip(0.0, 1.0)
    if windowed:
        return up
    lo, hi = percentile_window(img01, pcfg)
    return unwindow(up, lo, hi)


def _as_images(images: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
    """(H, W), (N, H, W) or a list of (H, W) -> list of float32 (H, W) arrays in [0, 1]; one-line errors."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
        items = [arr] if arr.ndim == 2 else list(arr) if arr.ndim == 3 else None
        if items is None:
            raise ValueError(f"images: expected (H, W) or (N, H, W), got shape {tuple(arr.shape)}")
    else:
        items = [x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in images]
    out = []
    for i, img in enumerate(items):
        a = np.asarray(img)
        if a.ndim != 2 or min(a.shape) < 1:
            raise ValueError(f"images[{i}]: expected a 2-D grayscale image, got shape {tuple(a.shape)}")
        a = a.astype(np.float32)
        if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
            raise ValueError(f"images[{i}]: values must be finite and in [0, 1] (got [{a.min():g}, {a.max():g}])")
        out.append(a)
    return out


class DDPMHQPipeline(DiffusionPipeline):
    """Restore + super-resolve radiographs (DDPM-HQ): LQ images in [0, 1] -> images ``scale`` x the model's LQ size.

    Args:
        unet: the DDPM-HQ UNet (``ddpm_hq.build_unet``).
        scheduler: the sampler (``ddpm_hq.make_scheduler``), sharing the training noise schedule.
        lq_size: inputs are resized so their longer side is this (the scale the model learned anatomy at).
        scale: super-resolution factor.
        space_to_depth: the UNet's pixel-unshuffle factor (recorded and checked; None: from the UNet's channels).
        residual_scale: > 0: the model diffuses ``(HQ - bicubic(LQ)) * residual_scale``.
        prediction_type: what the UNet predicts (epsilon, v_prediction, sample; None: the scheduler's).
        preprocess: ``PreprocessConfig.to_dict()`` of the training data (percentile window).
        num_inference_steps, strength: default sampler schedule (``restore``): UNet evaluations per image =
            ``max(1, round(num_inference_steps * strength))``.
        anchor_sigma: > 0: outputs come back in the input's intensity scale with their structure coarser than a
            Gaussian of this many output px taken from the bicubic-upsampled input (``low_frequency_anchor``):
            the restorer adds detail and leaves the rendered exposure, tone and nodule contrast. 0: outputs in
            the model's windowed space, as sampled.
    """

    model_cpu_offload_seq = "unet"

    @register_to_config
    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        lq_size: int = 512,
        scale: int = 2,
        space_to_depth: int | None = None,
        residual_scale: float = 0.0,
        prediction_type: str | None = None,
        preprocess: dict[str, Any] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        strength: float = DEFAULT_STRENGTH,
        anchor_sigma: float = 0.0,
    ) -> None:
        super().__init__()
        if not (isinstance(anchor_sigma, (int, float)) and not isinstance(anchor_sigma, bool) and anchor_sigma >= 0):
            raise ModelFolderError(f"anchor_sigma must be a number >= 0 (0: off), got {anchor_sigma!r}")
        self.register_modules(unet=unet, scheduler=scheduler)
        s = space_to_depth_of(unet)
        if space_to_depth is None:  # not given: what the UNet was built for
            space_to_depth = s
            self.register_to_config(space_to_depth=s)
        if prediction_type is None:
            prediction_type = scheduler.config.prediction_type
            self.register_to_config(prediction_type=prediction_type)
        if s != space_to_depth or unet.config.in_channels != 2 * s * s:
            raise ModelFolderError(
                f"UNet has in/out channels {unet.config.in_channels}/{unet.config.out_channels}, which does not "
                f"match space_to_depth {space_to_depth} (expected {2 * space_to_depth**2}/{space_to_depth**2})"
            )
        if scheduler.config.prediction_type != prediction_type:
            raise ModelFolderError(
                f"scheduler prediction_type {scheduler.config.prediction_type!r} != pipeline's {prediction_type!r}"
            )
        self.preprocess_config = PreprocessConfig.from_dict(preprocess) if preprocess else PreprocessConfig()

    @classmethod
    def from_model(
        cls,
        unet: UNet2DModel,
        cfg: DDPMHQConfig,
        sampler: str = DEFAULT_SAMPLER,
        num_inference_steps: int = DEFAULT_STEPS,
        strength: float = DEFAULT_STRENGTH,
        anchor_sigma: float = 0.0,
    ) -> DDPMHQPipeline:
        """A pipeline around a trained UNet and its ``DDPMHQConfig`` with sampler ``sampler`` (ddpm, ddim, dpmsolver++)."""
        return cls(
            unet=unet,
            scheduler=make_scheduler(sampler, cfg),
            lq_size=cfg.lq_size,
            scale=cfg.scale,
            space_to_depth=cfg.space_to_depth,
            residual_scale=cfg.residual_scale,
            prediction_type=cfg.prediction_type,
            preprocess=dict(cfg.preprocess),
            num_inference_steps=num_inference_steps,
            strength=strength,
            anchor_sigma=anchor_sigma,
        )

    def model_config(self) -> DDPMHQConfig:
        """The ``DDPMHQConfig`` of this pipeline's UNet and noise schedule (for ``make_scheduler``, training)."""
        u, sc = self.unet.config, self.scheduler.config
        n = len(u.block_out_channels)
        levels = tuple(name.startswith("Attn") for name in u.down_block_types)
        return DDPMHQConfig(
            lq_size=self.config.lq_size, scale=self.config.scale, space_to_depth=self.config.space_to_depth,
            block_out_channels=tuple(u.block_out_channels), layers_per_block=u.layers_per_block,
            attention_levels=levels if len(levels) == n else None, mid_attention=bool(u.add_attention),
            norm_num_groups=u.norm_num_groups, attention_head_dim=u.attention_head_dim or 8,
            num_train_timesteps=sc.num_train_timesteps, beta_schedule=sc.beta_schedule,
            prediction_type=self.config.prediction_type, residual_scale=self.config.residual_scale,
            preprocess=dict(self.config.preprocess or {}),
        )  # fmt: skip

    def set_sampler(self, name: str) -> DDPMHQPipeline:
        """Swap the scheduler for ``name`` (ddpm, ddim, dpmsolver++) on the same noise schedule; returns self."""
        self.scheduler = make_scheduler(name, self.model_config())
        return self

    def output_size(self, in_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the restored image of an (h, w) input (at the default ``input_size="model"``)."""
        h, w = model_scale_size(int(in_size[0]), int(in_size[1]), int(self.config.lq_size))
        return h * self.config.scale, w * self.config.scale

    @property
    def sampler_name(self) -> str:
        """``make_scheduler`` name of the current scheduler (ddpm, ddim, dpmsolver++), or its class name."""
        return SAMPLER_NAMES.get(type(self.scheduler).__name__, type(self.scheduler).__name__)

    @torch.no_grad()
    def __call__(
        self,
        images: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
        num_inference_steps: int | None = None,
        strength: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        tile: int | None = None,
        overlap: int = 32,
        output_type: str = "np",
        return_dict: bool = True,
        input_size: int | str | None = "model",
        anchor_sigma: float | None = None,
    ) -> DDPMHQPipelineOutput | tuple[list[Any]]:
        """Restore LQ images in [0, 1] ((H, W), (N, H, W) or a list of (H, W)), one at a time.

        Each image is windowed as the model's preprocess says, resized so its longer side is ``lq_size`` and
        restored ``scale`` x. With one generator, images draw their noise from it in order; a list gives each
        image its own (same generator state, same output, whatever else is in the call).

        Args:
            num_inference_steps, strength: sampler schedule (None: the pipeline's configured defaults).
            tile, overlap: HQ-pixel tiles for memory (None: whole images; see ``restore``).
            output_type: "np" (float32 arrays in [0, 1]) or "pt" (float32 tensors on the CPU).
            input_size: longer side inputs are resized to: "model" (``lq_size``, the scale the model learned
                anatomy at), an int, or None for the native size.
            anchor_sigma: low-frequency anchoring in output px (None: the pipeline's configured value; 0: off).
        """
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type {output_type!r}: expected one of np, pt")
        steps = int(num_inference_steps or self.config.num_inference_steps)
        strength = float(strength if strength is not None else self.config.strength)
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        sigma = float(self.config.anchor_sigma if anchor_sigma is None else anchor_sigma)
        if not sigma >= 0.0:
            raise ValueError(f"anchor_sigma must be >= 0 (0: off), got {anchor_sigma}")
        size = int(self.config.lq_size) if input_size == "model" else input_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"input_size must be 'model', a positive int or None, got {input_size!r}")
        imgs = _as_images(images)
        if isinstance(generator, Sequence):
            if len(generator) != len(imgs):
                raise ValueError(f"{len(generator)} generators for {len(imgs)} images")
            gens = list(generator)
        else:
            gens = [generator] * len(imgs)
        outs: list[Any] = []
        for img, gen in zip(imgs, gens):
            lq = model_input(img, self.preprocess_config, size)
            x = restore(
                self.unet, self.scheduler, torch.from_numpy(lq)[None, None].to(self.unet.device), steps, gen,
                tile=tile, overlap=overlap, scale=int(self.config.scale), strength=strength,
                residual_scale=float(self.config.residual_scale),
            )  # fmt: skip
            hq = ((x[0, 0].float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
            if sigma > 0:
                lo, hi = percentile_window(img, self.preprocess_config)
                hq = torch.from_numpy(anchored_output(hq.numpy(), img, lo, hi, sigma))
            outs.append(hq.numpy() if output_type == "np" else hq)
        self.maybe_free_model_hooks()
        return DDPMHQPipelineOutput(images=outs) if return_dict else (outs,)


# ---------------------------------------------------------------------------------------------- loading


def _one_line(err: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_weights(path: Path) -> None:
    """Raise ModelFolderError when a safetensors file is truncated or not safetensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
            if keys:  # reading one tensor touches the data section's bounds
                fh.get_slice(keys[-1])
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise ModelFolderError(f"{path}: corrupt or truncated weights ({_one_line(err)})") from None
    if not keys:
        raise ModelFolderError(f"{path}: weights file holds no tensors")


def _missing(folder: str | Path, what: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{folder}: no DDPM-HQ model ({what}); train one with `diffusionxray train ddpm-hq --output-dir {folder} ...` "
        "(weights are never downloaded)"
    )


def load_pipeline(
    folder: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> DDPMHQPipeline:
    """Load a DDPM-HQ pipeline folder (or the older ``save_model`` folder) from local files only.

    Raises:
        ModelNotFoundError: the folder, its ``model_index.json`` or a component's files are missing (one line).
        ModelFolderError: they exist but are corrupt or inconsistent (one line).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise _missing(folder, "folder does not exist")
    if not (folder / MODEL_INDEX).is_file():
        if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():  # older single-folder format
            _check_weights(folder / WEIGHTS_NAME)
            try:
                unet, cfg = load_model(folder, device=device, dtype=dtype)
                # that format recorded no sampler: the one its tools used (DDIM, 50 steps from pure noise)
                return DDPMHQPipeline.from_model(unet, cfg, "ddim", 50, 1.0)
            except (ModelNotFoundError, ModelFolderError):
                raise
            except Exception as err:
                raise ModelFolderError(f"{folder}: cannot load the model ({_one_line(err)})") from None
        raise _missing(folder, f"missing {MODEL_INDEX}")
    try:
        index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{folder / MODEL_INDEX}: not valid JSON ({_one_line(err)})") from None
    if not isinstance(index, dict) or index.get("_class_name") != DDPMHQPipeline.__name__:
        got = index.get("_class_name") if isinstance(index, dict) else type(index).__name__
        raise ModelFolderError(f"{folder / MODEL_INDEX}: not a {DDPMHQPipeline.__name__} folder (_class_name {got!r})")
    needed = ["unet/config.json", f"unet/{WEIGHTS_NAME}", "scheduler/scheduler_config.json"]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise _missing(folder, f"missing {', '.join(missing)}")
    _check_weights(folder / "unet" / WEIGHTS_NAME)
    from diffusers.utils import logging as diffusers_logging

    bar = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar in CLI output
    try:
        pipe = DDPMHQPipeline.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except ModelFolderError as err:
        raise ModelFolderError(f"{folder}: {err}") from None
    except Exception as err:  # diffusers/pydantic/safetensors: anything wrong inside the folder
        raise ModelFolderError(f"{folder}: cannot load the pipeline ({_one_line(err)})") from None
    finally:
        if bar:
            diffusers_logging.enable_progress_bar()
    pipe.unet.eval()
    pipe = pipe.to(device or "cpu")
    return pipe if dtype in (None, torch.float32) else pipe.to(dtype=dtype)


def configure_sampler(
    folder: str | Path,
    sampler: str | None = None,
    num_inference_steps: int | None = None,
    strength: float | None = None,
    anchor_sigma: float | None = None,
) -> DDPMHQPipeline:
    """Set a pipeline folder's default sampler, steps, strength and/or anchoring in place (weights untouched).

    Only ``model_index.json`` and ``scheduler/scheduler_config.json`` are rewritten (atomically), e.g. to ship the
    setting measured best on held-out pairs. Returns the reloaded pipeline.
    """
    from data.atomic import atomic_write_json

    folder = Path(folder)
    pipe = load_pipeline(folder)
    if not (folder / MODEL_INDEX).is_file():
        raise ModelFolderError(f"{folder}: older single-folder format; save it as a pipeline first (save_pipeline)")
    if num_inference_steps is not None and num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if strength is not None and not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if anchor_sigma is not None and not anchor_sigma >= 0.0:
        raise ValueError(f"anchor_sigma must be >= 0 (0: off), got {anchor_sigma}")
    if sampler is not None:
        pipe.set_sampler(sampler)
    index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
    index["scheduler"] = ["diffusers", type(pipe.scheduler).__name__]
    if num_inference_steps is not None:
        index["num_inference_steps"] = int(num_inference_steps)
    if strength is not None:
        index["strength"] = float(strength)
    if anchor_sigma is not None:
        index["anchor_sigma"] = float(anchor_sigma)
    atomic_write_json(folder / "scheduler" / "scheduler_config.json", json.loads(pipe.scheduler.to_json_string()))
    atomic_write_json(folder / MODEL_INDEX, index)
    return load_pipeline(folder)


def save_pipeline(
    folder: str | Path,
    unet: UNet2DModel,
    cfg: DDPMHQConfig,
    ema: Any | None = None,
    sampler: str = DEFAULT_SAMPLER,
    num_inference_steps: int = DEFAULT_STEPS,
    strength: float = DEFAULT_STRENGTH,
) -> Path:
    """Write a pipeline folder (safetensors; the EMA weights when ``ema`` is given) for ``unet`` and ``cfg``."""
    folder = Path(folder)
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    try:
        DDPMHQPipeline.from_model(unet, cfg, sampler, num_inference_steps, strength).save_pretrained(
            folder, safe_serialization=True
        )
    finally:
        if ema is not None:
            ema.restore(unet.parameters())
    return folder
