"""Pairs folders: the (LQ, HQ) training pairs the degraders (MUNIT-LQ, DDPM-LQ) write and DDPM-HQ reads.

Layout::

    out_dir/hq/NAME.png   16-bit, size x size: the preprocessed (already windowed) HQ image
    out_dir/lq/NAME.png   16-bit, size/2 x size/2: its degraded version, 2x area-downsampled
    out_dir/pairs.json    provenance: method, model, seed, and per pair its name, hq_source (and patient)

NAME is the HQ file's stem (its relative path joined with "__" when stems collide). Both images are already
windowed, so readers map their pixel values linearly to [-1, 1] instead of windowing them again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data.images import write_png16
from restoration.preprocess import PreprocessConfig

PAIRS_INFO_NAME = "pairs.json"
PREPROCESS_NAME = "preprocess.json"


def item_seed(seed: int, index: int) -> int:
    """Independent per-image seed, so results do not depend on batch size or order."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] % (2**63))


def to_uint16(x: torch.Tensor) -> np.ndarray:
    """(H, W) or (1, H, W) tensor in [-1, 1] -> HxW uint16 (0 <-> -1, 65535 <-> +1)."""
    a = x.detach().float().cpu().reshape(x.shape[-2], x.shape[-1]).clamp(-1, 1).numpy()
    return np.rint((a + 1.0) * (65535.0 / 2.0)).astype(np.uint16)


def pair_names(paths: Sequence[Path], root: str | Path) -> list[str]:
    """File names for pairs: each stem + ".png", or its path under ``root`` joined with "__" when stems collide."""
    stems = [p.stem for p in paths]
    dup = {s for s in stems if stems.count(s) > 1}
    names = []
    for p in paths:
        if p.stem in dup:
            rel = p.relative_to(root).with_suffix("")
            names.append("__".join(rel.parts) + ".png")
        else:
            names.append(p.stem + ".png")
    if len(set(names)) != len(names):
        raise ValueError(f"{root}: image names collide even with their folders; rename the files")
    return names


def write_pair(out_dir: str | Path, name: str, lq: torch.Tensor, hq: torch.Tensor) -> None:
    """Write ``out_dir/lq/name`` and ``out_dir/hq/name`` as 16-bit PNGs from [-1, 1] tensors."""
    out = Path(out_dir)
    write_png16(out / "lq" / name, to_uint16(lq))
    write_png16(out / "hq" / name, to_uint16(hq))


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x area downsampling (2x2 box average) of (B, C, H, W) with even H, W."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"2x downsampling needs even H and W, got {tuple(x.shape[-2:])}")
    return F.avg_pool2d(x, 2)


def read_preprocess(model_dir: str | Path, size: int | None) -> PreprocessConfig:
    """Preprocessing a degrader was trained with (``preprocess.json``), optionally at another ``size``."""
    p = Path(model_dir) / PREPROCESS_NAME
    pcfg = PreprocessConfig.from_dict(json.loads(p.read_text(encoding="utf-8"))) if p.is_file() else PreprocessConfig()
    if size is not None:
        pcfg = PreprocessConfig(size=size, low_pct=pcfg.low_pct, high_pct=pcfg.high_pct)
    return pcfg


def source_record(name: str, hq_source: Path) -> dict[str, Any]:
    """One pair's provenance for ``pairs.json``: its name, HQ source and, for MHH COVID-19 CXRs, the patient."""
    from restoration.preprocess import mhh_patient_of

    rec: dict[str, Any] = {"name": name, "hq_source": str(hq_source)}
    try:
        rec["patient"] = mhh_patient_of(hq_source)  # recorded now: the source may not be reachable later
    except ValueError:
        pass  # not an MHH image: the source file itself is the group
    return rec


def pairs_root(folder: str | Path) -> Path | None:
    """The pairs folder that ``folder`` (the folder itself, or its ``hq/`` or ``lq/``) belongs to, or None."""
    f = Path(folder)
    for cand in (f, f.parent) if f.name in ("hq", "lq") else (f,):
        if (cand / PAIRS_INFO_NAME).is_file():
            return cand
    return None


def in_pairs_folder(path: str | Path) -> bool:
    """Whether an image file lies in the ``hq/`` or ``lq/`` of a pairs folder (then it is already windowed)."""
    p = Path(path)
    return p.parent.name in ("hq", "lq") and (p.parent.parent / PAIRS_INFO_NAME).is_file()


def pair_records(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Pair name -> its ``pairs.json`` record (``name``, ``hq_source``, maybe ``patient``); {} without pairs.json.

    Args:
        folder: a pairs folder or its ``hq/`` / ``lq/`` subfolder.
    """
    root = pairs_root(folder)
    if root is None:
        return {}
    info = json.loads((root / PAIRS_INFO_NAME).read_text(encoding="utf-8"))
    return {str(r["name"]): r for r in info.get("pairs", []) if "name" in r}
