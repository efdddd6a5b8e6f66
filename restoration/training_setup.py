"""What every restoration training run sets up around ``accelerate``: checkpoint folders, resume, data streams, logs.

Shared by ``train_ddpm_hq``, ``train_munit`` and ``train_ddpm_lq`` so they name, prune and resume checkpoints the
same way (``output_dir/checkpoint-N``, N = optimiser steps) and log the same kind of hyper-parameters.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

MIXED_PRECISION = ("no", "fp16", "bf16")

# The independent random consumers of a training run, in spawn order: stream i is child i of SeedSequence(seed), so
# no consumer's draws shift another's. Append new streams at the end (existing ones keep their values).
SEED_STREAMS = ("train", "validation", "held_out_pairs", "batch_order")


def stream_seed(seed: int, stream: str, *sub: int) -> int:
    """A torch seed for one consumer of a run's randomness, spawned from ``SeedSequence(seed)``.

    Args:
        seed: the run's seed.
        stream: one of ``SEED_STREAMS``.
        sub: further spawn levels, e.g. the process index or the epoch.
    """
    key = (SEED_STREAMS.index(stream), *(int(v) for v in sub))
    return int(np.random.SeedSequence(int(seed), spawn_key=key).generate_state(1, dtype=np.uint64)[0] % (2**63))


# ------------------------------------------------------------------------------------------- checkpoints


# The settings all three trainers share carry the same names; keys of configs saved before that still load.
LEGACY_TRAINER_KEYS = {
    "train_batch_size": "batch_size",
    "learning_rate": "lr",
    "beta1": "adam_beta1",
    "beta2": "adam_beta2",
    "weight_decay": "adam_weight_decay",
    "resume_from_checkpoint": "resume",
}


def trainer_settings(d: Mapping[str, Any]) -> dict[str, Any]:
    """A trainer config dict with pre-unification keys renamed (``disable_tqdm``/``disable_progress`` → ``progress``)."""
    out = dict(d)
    for old, new in LEGACY_TRAINER_KEYS.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    for old in ("disable_tqdm", "disable_progress"):
        if isinstance(out.get(old), bool) and "progress" not in out:
            out["progress"] = not out.pop(old)
    if "resume" in out and out["resume"] is None:  # resume_from_checkpoint=None: start afresh
        out["resume"] = False
    return out


RUN_RECORD_KEYS = ("global_step", "resumed_from", "stage", "init_from", "conditional", "images", "skipped_updates")


def saved_train_config(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The training fields of a config file, which may be a run's own record (``model/train_config.json`` of MUNIT,
    ``ddpm_lq_config.json``'s ``train_config``), and the record keys left out (what the run did, not settings)."""
    fields = dict(data["train_config"]) if isinstance(data.get("train_config"), Mapping) else dict(data)
    ignored = sorted(k for k in (data if "train_config" in data else fields) if k in RUN_RECORD_KEYS)
    for key in ignored:
        fields.pop(key, None)
    return fields, ignored


def resume_checkpoint(resume: bool | str, output_dir: str | Path) -> Path | None:
    """The checkpoint a run continues from: the latest in ``output_dir`` (True or "latest"), none (False), or the
    ``checkpoint-N`` folder named; a missing folder is a one-line ValueError."""
    if resume is False:
        return None
    if resume is True or resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not path.is_dir():
        raise ValueError(f"resume: {path}: checkpoint folder does not exist (use true, false or a checkpoint-N folder)")
    return path


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders in ``output_dir`` sorted by N (oldest first)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-N`` folder with the largest N, or None."""
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


def checkpoint_step(path: str | Path) -> int:
    """N of a ``checkpoint-N`` folder."""
    return int(Path(path).name.split("-", 1)[1])


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete the oldest ``checkpoint-N`` folders so that at most ``keep`` remain; returns the deleted ones."""
    found = checkpoint_dirs(output_dir)
    doomed = found[: max(0, len(found) - max(0, keep))]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, total_limit: int | None) -> Path:
    """``accelerator.save_state`` into ``output_dir/checkpoint-step``, first pruning to ``total_limit - 1``.

    The state is written to a hidden ``.checkpoint-step.partial`` folder and renamed when complete, so a run killed
    while saving leaves no half-written ``checkpoint-N`` for the next run to resume from (partial folders left by
    such a run are removed here). Call it on every process: each one saves its own RNG state.
    """
    path = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        for stale in output_dir.glob(".checkpoint-*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        if total_limit is not None:
            prune_checkpoints(output_dir, total_limit - 1)  # room for the one about to be written
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if path.exists():  # the same step saved before (a rerun that was told to stop there again)
            shutil.rmtree(path)
        partial.rename(path)
    accelerator.wait_for_everyone()
    return path


# ------------------------------------------------------------------------------------------ RNG and data


class GeneratorState:
    """A torch.Generator that accelerate can checkpoint (``register_for_checkpointing`` needs state_dict).

    Training randomness (noise, timesteps, styles) is drawn from it rather than from the global RNG: data loader
    iterators draw from the global RNG when they start, and a resumed run starts them at another step.

    Args:
        seed: initial seed (``stream_seed(seed, "train", process_index)`` so processes differ).
        device: where the generator lives (draw large noise tensors on the training device).
    """

    def __init__(self, seed: int, device: str | torch.device = "cpu") -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator state, for ``accelerator.save_state``."""
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the state written by ``state_dict``."""
        self.generator.set_state(state["state"])


def load_checkpoint(accelerator: Any, path: Path | None, rng: GeneratorState, rng_index: int) -> int:
    """Register ``rng`` for checkpointing and restore ``path`` (None: fresh run); returns the step to resume at.

    Args:
        accelerator: the run's Accelerator (other custom objects already registered).
        path: ``checkpoint-N`` folder or None.
        rng: the run's training RNG.
        rng_index: how many custom objects were registered before it (its ``custom_checkpoint_{i}.pkl`` index).
    """
    # checkpoints written before the RNG was checkpointed lack its file: load them first, register afterwards
    has_rng = path is None or (Path(path) / f"custom_checkpoint_{rng_index}.pkl").is_file()
    if has_rng:
        accelerator.register_for_checkpointing(rng)
    if path is not None:
        accelerator.load_state(str(path))
    if not has_rng:
        accelerator.register_for_checkpointing(rng)
    return 0 if path is None else checkpoint_step(path)


def infinite_batches(accelerator: Any, loader: Any, start_step: int) -> Iterator[Any]:
    """Endless batches from a prepared loader, resuming at batch ``start_step`` (epoch-seeded shuffles)."""
    n = len(loader)
    epoch, skip = divmod(start_step, n)
    while True:
        it = accelerator.skip_first_batches(loader, skip) if skip else loader
        if hasattr(it, "set_epoch"):
            it.set_epoch(epoch)  # the seedable sampler shuffles by (seed, epoch): a resumed run sees the same order
        yield from it
        epoch, skip = epoch + 1, 0


def out_of_time(accelerator: Any, started: float, budget_s: float | None) -> bool:
    """Whether a run's wall-clock budget (seconds since ``started``, a ``time.monotonic()``) is spent, agreed by
    every process (the slowest decides), so all of them stop at the same step; False without a budget."""
    import time

    if budget_s is None:
        return False
    spent = torch.tensor([float(time.monotonic() - started >= budget_s)], device=accelerator.device)
    return bool(accelerator.reduce(spent, reduction="sum").item() > 0) if accelerator.num_processes > 1 else bool(spent.item())


def default_device(device: str | torch.device | None) -> torch.device:
    """``device`` or CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------- logging


def flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """Flatten nested dicts to TensorBoard-hparams-friendly scalars ("a.b": value; other types as str)."""
    out: dict[str, int | float | str | bool] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out
