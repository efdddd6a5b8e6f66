"""Train DDPM-HQ on (LQ, HQ) pairs made from real high-quality CXRs (after diffusers' train_unconditional.py).

Accelerate handles devices/mixed precision/checkpoints; ``checkpoint-N`` folders hold model, optimizer, LR
scheduler, EMA and RNG state so an interrupted run resumes exactly (``resume=true``, the default).
Batches are drawn from a seeded, step-indexed permutation instead of a DataLoader so resuming reproduces the
same data order without replaying the loader.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from restoration.ddpm_hq import (
    DDPMHQConfig,
    build_unet,
    make_scheduler,
    save_model,
    training_loss,
    upsample_condition,
)
from restoration.ddpm_hq_sampling import restore
from restoration.degrade import ClassicalDegradationConfig, bicubic_degrade, classical_degrade
from restoration.pairs import pair_records
from restoration.preprocess import (
    ImageFolderDataset,
    PreprocessConfig,
    apply_jitter,
    list_images,
    mhh_patient_of,
    random_jitter_params,
    split_by_source,
)
from restoration.training_setup import (
    GeneratorState,
    checkpoint_step,
    flat_config,
    resume_checkpoint,
    save_checkpoint,
    stream_seed,
    trainer_settings,
)

PAIR_SOURCES = ("bicubic", "classical", "pairs_dir")
SPLIT_NAME = "split.json"
GROUP_BY = ("auto", "mhh", "stem", "parent")


@dataclass
class TrainConfig:
    """Everything a DDPM-HQ training run needs (saved as ``train_config.json`` in ``output_dir``).

    Args:
        hq_dir: folder of real high-quality CXRs (png/jpg/dcm, recursive).
        output_dir: final model + ``checkpoint-N`` folders + ``logs`` (TensorBoard).
        pair_source: "bicubic" (paper baseline), "classical" (Real-ESRGAN chain) or "pairs_dir"
            (precomputed LQ images in ``lq_dir`` with the same relative names/stems as the HQ files).
        group_by: split groups of the source images (for pairs_dir: each pair's ``hq_source`` in pairs.json):
            "mhh" (patient from data.csv, required), "stem", "parent" folder, "auto" (the patient where a data.csv
            or pairs.json knows it, else the stem). The split is written to ``split.json`` beside the model.
        lq_size, scale: training LQ side and SR factor (HQ side = lq_size * scale).
        prediction_type, residual_scale: what the diffusion model learns (see ``DDPMHQConfig``); defaults are the
            data-efficient residual/x0 setting, ``residual_scale=0, prediction_type=epsilon`` is the paper's.
        max_train_steps: optimizer steps; checkpointing_steps/validation_steps in the same unit.
        resume: continue from the latest checkpoint in ``output_dir`` (true), start afresh (false) or continue from
            the ``checkpoint-N`` folder named.
        batch_size, lr, progress: images per device per step, peak learning rate, show the progress bar.
    """

    hq_dir: str = ""
    output_dir: str = "runs/ddpm_hq"
    pair_source: str = "bicubic"
    lq_dir: str | None = None
    blur_sigma: float = 0.0
    val_fraction: float = 0.1
    split_seed: int = 0
    group_by: str = "auto"
    # preprocessing
    lq_size: int = 64
    scale: int = 2
    low_pct: float = 0.5
    high_pct: float = 99.5
    augment: bool = True
    # model
    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] | None = None
    norm_num_groups: int = 32
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    # From scratch, diffusing the residual over bicubic with x0 prediction beats the bicubic input within a few
    # hundred CPU steps, where the paper's setting (image, epsilon: residual_scale=0, prediction_type=epsilon)
    # is still far below it (BENCHMARKS.md). The paper's model starts from weights pretrained on ~650k CXRs.
    prediction_type: str = "sample"
    loss: str = "l1"
    residual_scale: float = 4.0
    # optimisation
    batch_size: Annotated[int, Field(ge=1)] = 8
    gradient_accumulation_steps: int = 1
    lr: Annotated[float, Field(gt=0)] = 1e-4
    optimizer: str = "adamw"
    adam_beta1: float = 0.95
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-6
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 100
    max_train_steps: Annotated[int, Field(ge=0)] = 10000
    max_grad_norm: float = 1.0
    use_ema: bool = True
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    mixed_precision: str = "no"
    seed: Annotated[int, Field(ge=0)] = 0
    cpu: bool = False
    # bookkeeping
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume: bool | str = True
    validation_steps: int = 500
    num_val_images: int = 8
    val_inference_steps: int = 20
    val_scheduler: str = "ddim"
    val_strength: float = 1.0
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.pair_source not in PAIR_SOURCES:
            raise ValueError(f"unknown pair_source {self.pair_source!r}: expected one of {', '.join(PAIR_SOURCES)}")
        if self.pair_source == "pairs_dir" and not self.lq_dir:
            raise ValueError("pair_source 'pairs_dir' needs lq_dir (folder of LQ images named like the HQ files)")
        if self.group_by not in GROUP_BY:
            raise ValueError(f"unknown group_by {self.group_by!r}: expected one of {', '.join(GROUP_BY)}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: expected one of adam, adamw")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}: expected one of no, fp16, bf16")
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.attention_levels is not None:
            self.attention_levels = tuple(bool(a) for a in self.attention_levels)

    def model_config(self) -> DDPMHQConfig:
        """The DDPMHQConfig this run trains."""
        return DDPMHQConfig(
            lq_size=self.lq_size,
            scale=self.scale,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            attention_levels=self.attention_levels,
            norm_num_groups=self.norm_num_groups,
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
            loss=self.loss,
            residual_scale=self.residual_scale,
            preprocess=self.preprocess_config().to_dict(),
        )

    def preprocess_config(self, size: int | None = None) -> PreprocessConfig:
        """HQ preprocessing (or at ``size``)."""
        return PreprocessConfig(size=size or self.lq_size * self.scale, low_pct=self.low_pct, high_pct=self.high_pct)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        from data.settings import settings_dict

        return settings_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``, strictly validated (data.settings); pre-unification keys still load."""
        from data.settings import load_settings

        return load_settings(cls, trainer_settings(d))


# --------------------------------------------------------------------------------------------- helpers


def batch_indices(n: int, batch: int, position: int, seed: int) -> list[int]:
    """Items ``position .. position+batch`` of an endless stream of per-epoch seeded permutations of range(n)."""
    out: list[int] = []
    perms: dict[int, list[int]] = {}
    for k in range(position, position + batch):
        epoch, j = divmod(k, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(seed, "batch_order", epoch))).tolist()
        out.append(perms[epoch][j])
    return out


@dataclass
class SplitGroups:
    """Which source image and which split group (patient, else source image) every training file comes from.

    Callable as the ``group_of`` of ``split_by_source``.

    Args:
        mode: the grouping actually used ("mhh", "stem", "parent", or "auto" = patient where known, else stem).
        source_of: file -> source image (the file itself, or a pair's ``hq_source`` from its pairs.json).
        group_of: file -> group key.
    """

    mode: str
    source_of: dict[Path, str]
    group_of: dict[Path, str]

    def __call__(self, path: str | Path) -> str:
        return self.group_of[Path(path)]

    def split_record(self, train: list[Path], val: list[Path]) -> dict[str, Any]:
        """JSON-able train/val lists of sources and groups (written as ``split.json`` beside the model)."""

        def side(paths: list[Path]) -> dict[str, list[str]]:
            return {
                "sources": sorted({self.source_of[p] for p in paths}),
                "groups": sorted({self.group_of[p] for p in paths}),
            }

        return {"group_by": self.mode, "train": side(train), "val": side(val)}


def _patient(source: str, record: dict[str, Any] | None) -> str | None:
    """MHH patient id of a source image: recorded in pairs.json, or looked up in the nearest data.csv."""
    if record is not None and record.get("patient"):
        return str(record["patient"])
    try:
        return mhh_patient_of(source)
    except ValueError:
        return None


def group_function(cfg: TrainConfig, paths: list[Path]) -> SplitGroups:
    """Split grouping for ``cfg.group_by`` (see TrainConfig), applied to each file's *source* image.

    For ``pair_source="pairs_dir"`` the source is the pair's ``hq_source`` in the folder's ``pairs.json``: pairs
    made from one patient's images must not land on both sides of the split.
    """
    records: dict[str, dict[str, Any]] = {}
    if cfg.pair_source == "pairs_dir":
        records = pair_records(cfg.hq_dir) or pair_records(cfg.lq_dir or "")
        if not records:
            print(f"warning: {cfg.hq_dir}: no pairs.json beside it; the split groups pairs by their own file names")
    source_of, group_of = {}, {}
    for p in paths:
        rec = records.get(p.name)
        source = str(rec["hq_source"]) if rec and rec.get("hq_source") else str(p)
        source_of[p] = source
        if cfg.group_by in ("auto", "mhh"):
            patient = _patient(source, rec)
            if patient is None and cfg.group_by == "mhh":
                raise ValueError(f"{p}: no MHH patient id for source {source} (group_by=mhh; try auto, stem or parent)")
            group_of[p] = f"patient:{patient}" if patient is not None else f"image:{Path(source).stem}"
        elif cfg.group_by == "parent":
            group_of[p] = str(Path(source).parent)
        else:
            group_of[p] = Path(source).stem
    return SplitGroups(cfg.group_by, source_of, group_of)


def match_lq_paths(hq_paths: list[Path], hq_dir: Path, lq_dir: Path) -> list[Path]:
    """LQ file for each HQ file: same relative folder and stem in ``lq_dir`` (any image suffix)."""
    by_key = {(str(p.relative_to(lq_dir).parent), p.stem): p for p in list_images(lq_dir)}
    out, missing = [], []
    for p in hq_paths:
        key = (str(p.relative_to(hq_dir).parent), p.stem)
        if key in by_key:
            out.append(by_key[key])
        else:
            missing.append(str(p.relative_to(hq_dir)))
    if missing:
        raise ValueError(f"{lq_dir}: no LQ image for {len(missing)} HQ files (e.g. {missing[0]}); names must match")
    return out


class PairSource:
    """Makes (hq, lq) training/validation batches in [-1, 1] according to ``cfg.pair_source``."""

    def __init__(self, cfg: TrainConfig, hq_paths: list[Path], lq_paths: list[Path] | None) -> None:
        self.cfg = cfg
        pre = cfg.pair_source == "pairs_dir"  # pairs folders are windowed already: linear mapping, no second window
        self.hq = ImageFolderDataset(hq_paths, cfg.preprocess_config(), prewindowed=pre)
        self.lq = None
        if lq_paths:
            self.lq = ImageFolderDataset(lq_paths, cfg.preprocess_config(cfg.lq_size), prewindowed=pre)
        self.classical = ClassicalDegradationConfig(scale=cfg.scale)

    def __len__(self) -> int:
        return len(self.hq)

    def batch(self, idx: list[int], gen: torch.Generator, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(hq, lq) for items ``idx``; jitter and classical degradations are drawn from ``gen``."""
        hq = torch.stack([torch.from_numpy(self.hq.array(i))[None] for i in idx])
        lq = torch.stack([torch.from_numpy(self.lq.array(i))[None] for i in idx]) if self.lq is not None else None
        if augment:
            hqs, lqs = [], []
            for k in range(len(idx)):
                p = random_jitter_params(gen)
                hqs.append(apply_jitter(hq[k], p))  # same normalised transform at both resolutions keeps pairs aligned
                if lq is not None:
                    lqs.append(apply_jitter(lq[k], p))
            hq = torch.stack(hqs)
            lq = torch.stack(lqs) if lq is not None else None
        if lq is None:
            if self.cfg.pair_source == "classical":
                lq, _ = classical_degrade(hq, gen, self.classical)
            else:
                lq = bicubic_degrade(hq, self.cfg.scale, self.cfg.blur_sigma)
        return hq, lq


# ---------------------------------------------------------------------------------------------- training


def validate(
    unet: torch.nn.Module, cfg: TrainConfig, val_hq: torch.Tensor, val_lq: torch.Tensor, device: torch.device
) -> dict[str, float]:
    """Mean PSNR/SSIM of restorations (fixed seed) and of the bicubic-upsampled LQ on held-out pairs."""
    from restoration.evaluate import psnr_ssim, to01

    sched = make_scheduler(cfg.val_scheduler, cfg.model_config())
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "validation"))
    was_training = unet.training
    unet.eval()
    out = restore(
        unet, sched, val_lq.to(device), cfg.val_inference_steps, gen, scale=cfg.scale, strength=cfg.val_strength,
        residual_scale=cfg.residual_scale,
    ).cpu()
    unet.train(was_training)
    base = upsample_condition(val_lq, cfg.scale)
    m = [psnr_ssim(to01(out[i, 0]), to01(val_hq[i, 0])) for i in range(len(out))]
    b = [psnr_ssim(to01(base[i, 0]), to01(val_hq[i, 0])) for i in range(len(out))]
    return {
        "val/psnr": float(np.mean([x[0] for x in m])),
        "val/ssim": float(np.mean([x[1] for x in m])),
        "val/bicubic_psnr": float(np.mean([x[0] for x in b])),
        "val/bicubic_ssim": float(np.mean([x[1] for x in b])),
    }


def train(cfg: TrainConfig) -> Path:
    """Train DDPM-HQ; returns ``cfg.output_dir`` holding the EMA weights (safetensors) + ddpm_hq_config.json."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from data.atomic import atomic_write_json

    out_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with="tensorboard",
        cpu=cfg.cpu,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
    )
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "train_config.json", cfg.to_dict())

    # ---- data: leak-free split by patient/source, fixed validation pairs
    hq_dir = Path(cfg.hq_dir)
    paths = list_images(hq_dir)
    if len(paths) < 2:
        raise ValueError(f"{hq_dir}: need at least 2 images to train and validate, found {len(paths)}")
    groups = group_function(cfg, paths)
    train_paths, val_paths = split_by_source(paths, cfg.val_fraction, cfg.split_seed, groups)
    if accelerator.is_main_process:
        atomic_write_json(out_dir / SPLIT_NAME, groups.split_record(train_paths, val_paths))
    lq_of = None
    if cfg.pair_source == "pairs_dir":
        lq_of = dict(zip(paths, match_lq_paths(paths, hq_dir, Path(cfg.lq_dir or ""))))
    train_src = PairSource(cfg, train_paths, [lq_of[p] for p in train_paths] if lq_of else None)
    val_hq = val_lq = None
    if val_paths and cfg.num_val_images > 0:
        vp = val_paths[: cfg.num_val_images]
        val_src = PairSource(cfg, vp, [lq_of[p] for p in vp] if lq_of else None)
        val_gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "held_out_pairs"))  # fixed held-out pairs across runs/resumes
        val_hq, val_lq = val_src.batch(list(range(len(vp))), val_gen, augment=False)

    # ---- model / optimiser / EMA
    set_seed(cfg.seed)
    mcfg = cfg.model_config()
    unet = build_unet(mcfg)
    noise_scheduler = make_scheduler("ddpm", mcfg)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(
        unet.parameters(),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.max_train_steps * accelerator.num_processes,
    )
    ema = None
    if cfg.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=cfg.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=cfg.ema_inv_gamma,
            power=cfg.ema_power,
            model_cls=type(unet),
            model_config=unet.config,
        )
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    gen_state = GeneratorState(stream_seed(cfg.seed, "train", accelerator.process_index))
    accelerator.register_for_checkpointing(gen_state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
        ema.to(accelerator.device)
    if accelerator.is_main_process:
        accelerator.init_trackers("ddpm_hq", config=flat_config(cfg.to_dict()))

    # ---- resume
    global_step = 0
    path = resume_checkpoint(cfg.resume, out_dir)
    if cfg.resume is not False:
        if path is None:
            accelerator.print(f"no checkpoint in {out_dir}; starting a new training run")
        else:
            accelerator.print(f"resuming from {path}")
            accelerator.load_state(str(path))
            if ema is not None:
                ema.to(accelerator.device)
            global_step = checkpoint_step(path)

    # ---- loop
    progress = tqdm(
        total=cfg.max_train_steps,
        initial=global_step,
        desc="ddpm-hq",
        disable=not cfg.progress or not accelerator.is_local_main_process,
    )
    gen = gen_state.generator
    per_step = cfg.batch_size * accelerator.num_processes
    micro = global_step * cfg.gradient_accumulation_steps
    metrics_path = out_dir / "metrics.jsonl"
    recent: list[float] = []
    t0 = time.time()
    unet.train()
    while global_step < cfg.max_train_steps:
        position = micro * per_step + accelerator.process_index * cfg.batch_size
        idx = batch_indices(len(train_src), cfg.batch_size, position, cfg.seed)
        hq, lq = train_src.batch(idx, gen, augment=cfg.augment)
        hq, lq = hq.to(accelerator.device), lq.to(accelerator.device)
        with accelerator.accumulate(unet):
            loss = training_loss(
                unet, noise_scheduler, hq, lq, gen, loss=cfg.loss, residual_scale=cfg.residual_scale
            )
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        micro += 1
        recent.append(float(loss.detach().item()))
        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(unet.parameters())
        global_step += 1
        progress.update(1)
        logs: dict[str, float] = {"loss": float(np.mean(recent)), "lr": lr_scheduler.get_last_lr()[0]}
        if ema is not None:
            logs["ema_decay"] = float(ema.cur_decay_value or 0.0)
        recent = []
        progress.set_postfix(loss=f"{logs['loss']:.4f}")
        if global_step % cfg.log_every == 0 or global_step == cfg.max_train_steps:
            accelerator.log(logs, step=global_step)
            if accelerator.is_main_process:
                with open(metrics_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": global_step, "time_s": round(time.time() - t0, 2), **logs}) + "\n")
        if cfg.checkpointing_steps > 0 and global_step % cfg.checkpointing_steps == 0:
            save_checkpoint(accelerator, out_dir, global_step, cfg.checkpoints_total_limit)  # every process
        if (
            accelerator.is_main_process
            and val_hq is not None
            and cfg.validation_steps > 0
            and (global_step % cfg.validation_steps == 0 or global_step == cfg.max_train_steps)
        ):
            model = accelerator.unwrap_model(unet)
            if ema is not None:  # validate the weights that will be shipped
                ema.store(model.parameters())
                ema.copy_to(model.parameters())
            vlogs = validate(model, cfg, val_hq, val_lq, accelerator.device)
            if ema is not None:
                ema.restore(model.parameters())
            accelerator.log(vlogs, step=global_step)
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": global_step, **vlogs}) + "\n")
            progress.write(
                f"step {global_step}: val PSNR {vlogs['val/psnr']:.2f} dB / SSIM {vlogs['val/ssim']:.4f} "
                f"(bicubic {vlogs['val/bicubic_psnr']:.2f} / {vlogs['val/bicubic_ssim']:.4f})"
            )
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model(out_dir, accelerator.unwrap_model(unet), mcfg, ema)
    accelerator.end_training()
    return out_dir
