"""The data side of DDPM-HQ training: which images train and which validate, and how (HQ, LQ) batches are made.

Real HQ images come only from the ``train`` part of ``restoration.splits.split_real`` (a pair counts as the
patient of its ``hq_source``); validation uses fixed crops of held-out images (else a patient-grouped slice of the
training part). Pairs come from one or several sources:

- ``bicubic``: LQ = antialiased bicubic downsampling of the HQ image (the paper's baseline);
- ``classical``: LQ = a Real-ESRGAN-style degradation chain drawn per crop;
- ``pairs_dir``: precomputed (LQ, HQ) pairs folders written by ``make-pairs`` (MUNIT-LQ, DDPM-LQ). Several folders
  are mixed item by item in a fixed cycle of ``pairs_weights`` items from each (default one each: item ``k`` comes
  from source ``k mod n_sources``), so every batch whose size is a multiple of the cycle holds the same share from
  each (weights 3, 1 and a batch of 8: 6 MUNIT-LQ + 2 DDPM-LQ). Each source walks through its own seeded
  permutation, epoch by epoch: a source's share does not depend on its size.

With ``crop_size`` set, whole images are loaded once (HQ at ``lq_size * scale``, LQ at ``lq_size``, cached) and
every item is a random aligned crop (LQ ``crop_size``, HQ ``crop_size * scale``): the cost of a step does not depend on
the image size, and the attention-free UNet applies to whole images at inference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from restoration.degrade import ClassicalDegradationConfig, bicubic_degrade, classical_degrade
from restoration.pairs import PAIRS_INFO_NAME, pair_records
from restoration.preprocess import (
    ImageFolderDataset,
    apply_jitter,
    list_images,
    mhh_patient_of,
    random_jitter_params,
    split_by_source,
)
from restoration.splits import is_held_out, patient_of
from restoration.training_setup import stream_seed

if TYPE_CHECKING:
    from restoration.train_ddpm_hq import TrainConfig

MAX_GAMMA = 0.1  # crop-mode augmentation: a random gamma exp(U(-0.1, 0.1)) on both images of a pair


def batch_indices(n: int, batch: int, position: int, seed: int) -> list[int]:
    """Items ``position .. position+batch`` of an endless stream of per-epoch seeded permutations of range(n)."""
    return [i for _, i in mixed_indices([n], batch, position, seed)]


def mixed_indices(
    sizes: list[int], batch: int, position: int, seed: int, weights: list[int] | None = None
) -> list[tuple[int, int]]:
    """(source, index) of items ``position .. position+batch`` of a stream that interleaves the sources.

    The stream repeats a cycle of ``sum(weights)`` items: ``weights[s]`` from source ``s``, sources in order (default:
    one each, so item k comes from source ``k % len(sizes)``). The i-th item a source gets is place i of its own
    endless stream of per-epoch seeded permutations (one source: the permutations of ``batch_indices``).
    """
    n_src = len(sizes)
    w = [1] * n_src if weights is None else [int(x) for x in weights]
    if len(w) != n_src or min(w) < 1:
        raise ValueError(f"mix weights {weights}: need one integer >= 1 per source ({n_src} sources)")
    cycle = [s for s in range(n_src) for _ in range(w[s])]
    rank = [sum(1 for t in cycle[:c] if t == cycle[c]) for c in range(len(cycle))]  # place within its source
    out: list[tuple[int, int]] = []
    perms: dict[tuple[int, int], list[int]] = {}
    for k in range(position, position + batch):
        turn, c = divmod(k, len(cycle))
        s = cycle[c]
        j = turn * w[s] + rank[c]
        epoch, r = divmod(j, sizes[s])
        if (s, epoch) not in perms:
            sub = (epoch,) if n_src == 1 else (epoch, s)  # one source keeps the stream of earlier runs
            g = torch.Generator().manual_seed(stream_seed(seed, "batch_order", *sub))
            perms[(s, epoch)] = torch.randperm(sizes[s], generator=g).tolist()
        out.append((s, perms[(s, epoch)][r]))
    return out


# ------------------------------------------------------------------------------------------- split groups


@dataclass
class SplitGroups:
    """Which source image and which split group (patient, else source image) every training file comes from.

    Callable as the ``group_of`` of ``split_by_source``.

    Args:
        mode: the grouping actually used ("mhh", "stem", "parent", or "auto" = patient where a data.csv,
            images.csv or pairs.json knows it, else the stem).
        source_of: file -> source image (the file itself, or a pair's ``hq_source`` from its pairs.json).
        group_of: file -> group key.
        patient_of: file -> patient id for the held-out split (``restoration.splits``).
    """

    mode: str
    source_of: dict[Path, str]
    group_of: dict[Path, str]
    patient_of: dict[Path, str]

    def __call__(self, path: str | Path) -> str:
        return self.group_of[Path(path)]

    def held_out(self, path: Path) -> bool:
        """Whether the file's source patient is in the held-out part that no model trains on."""
        return is_held_out(self.patient_of[path])

    def split_record(self, train: list[Path], val: list[Path], held_out: list[Path]) -> dict[str, Any]:
        """JSON-able lists of sources and groups per part (written as ``split.json`` beside the model)."""

        def side(paths: list[Path]) -> dict[str, list[str]]:
            return {
                "sources": sorted({self.source_of[p] for p in paths}),
                "groups": sorted({self.group_of[p] for p in paths}),
            }

        return {"group_by": self.mode, "train": side(train), "val": side(val), "held_out": side(held_out)}


def _patient(source: str, record: dict[str, Any] | None) -> str | None:
    """MHH patient id of a source image: recorded in pairs.json, or looked up in the nearest data.csv."""
    if record is not None and record.get("patient"):
        return str(record["patient"])
    try:
        return mhh_patient_of(source)
    except ValueError:
        return None


def group_function(cfg: TrainConfig, paths: list[Path], records: dict[str, dict[str, Any]] | None = None) -> SplitGroups:
    """Split grouping for ``cfg.group_by`` (see TrainConfig), applied to each file's *source* image.

    For pairs the source is the pair's ``hq_source`` in the folder's ``pairs.json`` (``records``; read from
    ``cfg.hq_dir``/``cfg.lq_dir`` when not given): pairs made from one patient's images must not land on both sides
    of a split.
    """
    if records is None:
        records = {}
        if cfg.pair_source == "pairs_dir":
            records = pair_records(cfg.hq_dir) or pair_records(cfg.lq_dir or "")
            if not records:
                print(f"warning: {cfg.hq_dir}: no pairs.json beside it; the split groups pairs by their own file names")
    source_of, group_of, patients = {}, {}, {}
    for p in paths:
        rec = records.get(p.name)
        source = str(rec["hq_source"]) if rec and rec.get("hq_source") else str(p)
        source_of[p] = source
        mhh = _patient(source, rec)
        patients[p] = mhh if mhh is not None else patient_of(source)  # the NIH images.csv, else the stem
        if cfg.group_by in ("auto", "mhh"):
            if mhh is None and cfg.group_by == "mhh":
                raise ValueError(f"{p}: no MHH patient id for source {source} (group_by=mhh; try auto, stem or parent)")
            known = mhh is not None or patients[p] != Path(source).stem
            group_of[p] = f"patient:{patients[p]}" if known else f"image:{Path(source).stem}"
        elif cfg.group_by == "parent":
            group_of[p] = str(Path(source).parent)
        else:
            group_of[p] = Path(source).stem
    return SplitGroups(cfg.group_by, source_of, group_of, patients)


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


# ------------------------------------------------------------------------------------------------ batches


def apply_gamma(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Gamma on [-1, 1] images (applied in [0, 1])."""
    return ((x + 1) / 2).clamp(0, 1) ** gamma * 2 - 1


class PairSource:
    """Makes (hq, lq) training/validation batches in [-1, 1] from one source (see the module docstring).

    Args:
        cfg: the run's TrainConfig (sizes, scale, kind of pairs).
        hq_paths: HQ images (real CXRs, or the ``hq/`` files of a pairs folder).
        lq_paths: the matching LQ files of a pairs folder, or None (LQ made from HQ: bicubic or classical).
        name: what the source is called in logs.
    """

    def __init__(self, cfg: TrainConfig, hq_paths: list[Path], lq_paths: list[Path] | None, name: str = "") -> None:
        self.cfg = cfg
        self.name = name or cfg.pair_source
        pre = lq_paths is not None  # pairs folders are windowed already: linear mapping, no second window
        self.hq = ImageFolderDataset(hq_paths, cfg.preprocess_config(), prewindowed=pre)
        self.lq = ImageFolderDataset(lq_paths, cfg.preprocess_config(cfg.lq_size), prewindowed=pre) if lq_paths else None
        self.synthetic = "bicubic" if cfg.pair_source == "bicubic" else "classical" if lq_paths is None else None
        self.classical = ClassicalDegradationConfig(scale=cfg.scale)
        self._bicubic: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.hq)

    def lq_array(self, i: int) -> np.ndarray | None:
        """Whole LQ image ``i`` (pairs file, or the cached bicubic downsampling of HQ); None for classical."""
        if self.lq is not None:
            return self.lq.array(i)
        if self.synthetic != "bicubic":
            return None
        if i not in self._bicubic:
            hq = torch.from_numpy(self.hq.array(i))[None, None]
            self._bicubic[i] = bicubic_degrade(hq, self.cfg.scale, self.cfg.blur_sigma)[0, 0].numpy()
        return self._bicubic[i]

    def batch(
        self, idx: list[int], gen: torch.Generator, augment: bool, crop: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hq, lq) for items ``idx``: whole images, or aligned random crops of LQ side ``crop``.

        Crop positions, jitter/gamma and classical degradations are drawn from ``gen``, item by item.
        """
        if crop is None:
            return self._whole(idx, gen, augment)
        s = self.cfg.scale
        hqs, lqs = [], []
        for i in idx:
            hq_full, lq_full = self.hq.array(i), self.lq_array(i)
            side = hq_full.shape[-1] // s
            if crop > side:
                raise ValueError(f"crop_size {crop} is larger than the LQ image side {side} ({self.hq.paths[i]})")
            y, x = (int(v) for v in torch.randint(0, side - crop + 1, (2,), generator=gen))
            hq = torch.from_numpy(hq_full[y * s : (y + crop) * s, x * s : (x + crop) * s].copy())[None]
            lq = None if lq_full is None else torch.from_numpy(lq_full[y : y + crop, x : x + crop].copy())[None]
            if augment:  # geometry varies through the crop position; intensity through one gamma for both
                gamma = math.exp(float(torch.rand(1, generator=gen)) * 2 * MAX_GAMMA - MAX_GAMMA)
                hq = apply_gamma(hq, gamma)
                lq = None if lq is None else apply_gamma(lq, gamma)
            hqs.append(hq)
            lqs.append(lq)
        hq_b = torch.stack(hqs)
        if self.synthetic == "classical":
            return hq_b, classical_degrade(hq_b, gen, self.classical)[0]
        return hq_b, torch.stack(lqs)  # type: ignore[arg-type]

    def _whole(self, idx: list[int], gen: torch.Generator, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(hq, lq) of whole images, jittered alike at both resolutions when ``augment``."""
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
            if self.synthetic == "classical":
                lq, _ = classical_degrade(hq, gen, self.classical)
            else:
                lq = bicubic_degrade(hq, self.cfg.scale, self.cfg.blur_sigma)
        return hq, lq


def add_lq_noise(lq: torch.Tensor, max_std: float, gen: torch.Generator) -> torch.Tensor:
    """LQ crops plus white Gaussian noise, its std drawn per item from U(0, ``max_std``) ([-1, 1] units).

    Our DRRs carry quantum noise that the degraders' outputs lack (measured: robust high-pass std 0.021 for the
    DRRs, 0.011 for MUNIT-LQ images); without it the restorer reads DRR noise as structure to sharpen.
    """
    if max_std <= 0:
        return lq
    std = torch.rand(lq.shape[0], generator=gen) * max_std
    return lq + std.view(-1, 1, 1, 1) * torch.randn(lq.shape, generator=gen)


def mixed_batch(
    sources: list[PairSource], items: list[tuple[int, int]], gen: torch.Generator, augment: bool, crop: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hq, lq) of ``mixed_indices`` items, source by source (draws from ``gen`` in a fixed order)."""
    hqs, lqs = [], []
    for s, src in enumerate(sources):
        idx = [i for t, i in items if t == s]
        if idx:
            hq, lq = src.batch(idx, gen, augment, crop)
            hqs.append(hq)
            lqs.append(lq)
    return torch.cat(hqs), torch.cat(lqs)


# ---------------------------------------------------------------------------------------------- the data


@dataclass
class TrainingData:
    """A run's training sources, fixed validation pairs and the split record for ``split.json``."""

    sources: list[PairSource]
    val_hq: torch.Tensor | None
    val_lq: torch.Tensor | None
    split: dict[str, Any]


def _source_lists(cfg: TrainConfig) -> list[tuple[str, list[Path], list[Path] | None, dict[str, dict[str, Any]]]]:
    """(name, hq files, lq files or None, pairs.json records) of every source the config names."""
    if cfg.pair_source != "pairs_dir":
        return [(cfg.pair_source, list_images(Path(cfg.hq_dir)), None, {})]
    if cfg.pairs_dirs:
        out = []
        for d in cfg.pairs_dirs:
            root = Path(d)
            if not (root / "hq").is_dir() or not (root / "lq").is_dir():
                raise ValueError(f"pairs_dirs: {root}: not a pairs folder (needs hq/ and lq/, from `make-pairs`)")
            info = root / PAIRS_INFO_NAME
            if info.is_file() and json.loads(info.read_text(encoding="utf-8")).get("complete") is False:
                raise ValueError(f"pairs_dirs: {root}: make-pairs has not finished this folder (rerun it to complete it)")
            hq = list_images(root / "hq")
            out.append((root.name, hq, match_lq_paths(hq, root / "hq", root / "lq"), pair_records(root)))
        return out
    hq_dir, lq_dir = Path(cfg.hq_dir), Path(cfg.lq_dir or "")
    hq = list_images(hq_dir)
    records = pair_records(hq_dir) or pair_records(lq_dir)
    if not records:
        print(f"warning: {hq_dir}: no pairs.json beside it; the split groups pairs by their own file names")
    return [(lq_dir.parent.name or "pairs_dir", hq, match_lq_paths(hq, hq_dir, lq_dir), records)]


def training_data(cfg: TrainConfig) -> TrainingData:
    """Sources of training pairs (held-out patients removed) and fixed validation pairs (held-out crops)."""
    sources: list[PairSource] = []
    val_items: list[tuple[PairSource, list[int]]] = []
    split: dict[str, Any] = {"group_by": cfg.group_by, "sources": {}}
    for name, hq, lq, records in _source_lists(cfg):
        if len(hq) < 2:
            raise ValueError(f"{name}: need at least 2 images to train and validate, found {len(hq)}")
        groups = group_function(cfg, hq, records)
        held = [p for p in hq if groups.held_out(p)] if cfg.exclude_held_out else []
        rest = [p for p in hq if p not in set(held)]
        if not rest:
            raise ValueError(f"{name}: all {len(hq)} images belong to held-out patients; nothing to train on")
        if held:  # validate on held-out patients: the training part stays whole
            train_paths, val_paths = rest, held
        else:
            train_paths, val_paths = split_by_source(rest, cfg.val_fraction, cfg.split_seed, groups)
        lq_of = dict(zip(hq, lq)) if lq is not None else None
        src = PairSource(cfg, train_paths, [lq_of[p] for p in train_paths] if lq_of else None, name=name)
        sources.append(src)
        split["sources"][name] = groups.split_record(train_paths, val_paths, held)
        if val_paths:
            val = PairSource(cfg, val_paths, [lq_of[p] for p in val_paths] if lq_of else None, name=name)
            val_items.append((val, list(range(len(val_paths)))))
    val_hq = val_lq = None
    if cfg.num_val_images > 0 and val_items:
        # the same number of validation pairs from each source, fixed across runs and resumes
        per = max(1, math.ceil(cfg.num_val_images / len(val_items)))
        gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "held_out_pairs"))
        parts = [src.batch(idx[:per], gen, augment=False, crop=cfg.crop(val=True)) for src, idx in val_items]
        val_hq = torch.cat([p[0] for p in parts])[: cfg.num_val_images]
        val_lq = torch.cat([p[1] for p in parts])[: cfg.num_val_images]
    if len(sources) == 1:  # one source: the record of earlier runs, at the top level
        split = {"group_by": cfg.group_by, **next(iter(split["sources"].values()))}
    return TrainingData(sources, val_hq, val_lq, split)
