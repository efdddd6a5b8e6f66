"""Pairs folders: the (LQ, HQ) training pairs the degraders (MUNIT-LQ, DDPM-LQ) write and DDPM-HQ reads.

Layout::

    out_dir/hq/NAME.png   16-bit, the windowed HQ image at twice the LQ scale (NIH: its native 1024 x 1024)
    out_dir/lq/NAME.png   16-bit, half its size (512 x 512): the degrader's output on the 2x area-downsampled HQ
    out_dir/pairs.json    provenance: method, model, seed, split, and per pair its name, hq_source and patient

NAME is the HQ file's stem (its relative path joined with "__" when stems collide). Both images are already
windowed, so readers map their pixel values linearly to [-1, 1] instead of windowing them again.

:func:`write_pairs` is the one driver both degraders use: whole images, a per-image seed from (seed, NAME) so a
pair does not depend on which other images are present, atomic PNG writes, and resuming (pairs already written
are skipped; ``pairs.json`` is rewritten, complete, at the end).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
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


# ----------------------------------------------------------------------------------------- pairs driver

# (B, 1, h, w) HQ images at the LQ scale in [-1, 1] (padded to the model's multiple), one seed per image
# -> their degraded (LQ) versions, same shape.
Degrade = Callable[[torch.Tensor, list[int]], torch.Tensor]


def name_seed(seed: int, name: str) -> int:
    """Per-pair seed from the run seed and the pair's name (independent of the other images and their order)."""
    return item_seed(seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big"))


def hq_pair_images(path: Path, cfg: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(HQ (1, 1, 2h, 2w), its 2x area-downsampled LQ-scale copy (1, 1, h, w)), windowed, in [-1, 1].

    (h, w) has the longer side ``cfg.size`` (the LQ scale); the window is computed at the file's resolution.
    """
    from restoration.preprocess import load_grayscale, model_scale_size, normalize, resize_image

    x = normalize(load_grayscale(path), cfg)
    h, w = model_scale_size(x.shape[0], x.shape[1], cfg.size)
    hq = torch.from_numpy(resize_image(x, (2 * h, 2 * w)))[None, None]
    return hq, downsample2x(hq)


def pairs_items(hq_dirs: str | Path | Sequence[str | Path], split: str) -> tuple[list[Path], list[str]]:
    """(HQ files of ``split``, their pair names) from one or several real-CXR folders."""
    from restoration.degrader_data import as_folders, real_images

    dirs = as_folders(hq_dirs)
    paths = real_images(dirs, split, "hq_dir")  # type: ignore[arg-type]
    root = Path(os.path.commonpath([str(d.resolve()) for d in dirs])) if len(dirs) > 1 else dirs[0]
    names = pair_names([p.resolve() for p in paths] if len(dirs) > 1 else paths, root)
    return paths, names


def write_pairs(
    hq_dirs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    cfg: PreprocessConfig,
    degrade: Degrade,
    info: dict[str, Any],
    seed: int,
    split: str = "train",
    multiple: int = 1,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = True,
    record_extra: Callable[[int], dict[str, Any]] | None = None,
) -> Path:
    """Degrade every real HQ image of ``split`` into a pairs folder, resuming one that was interrupted.

    Args:
        hq_dirs: real-CXR folder(s); only the ``split`` part of the patient split is used.
        out_dir: the pairs folder (created).
        cfg: window and LQ scale (``cfg.size`` is the LQ longer side; the HQ is twice that).
        degrade: the degrader (see ``Degrade``).
        info: the run's settings for ``pairs.json`` (method, model, ...); a folder begun with other settings
            is refused instead of being mixed.
        seed: per-pair seeds derive from (seed, NAME).
        split: "train", "held_out" or "all".
        multiple: the degrader needs sides that are multiples of this (reflect-padded, then cropped back).
        batch_size: images per degrader call (consecutive images of the same size).
        device: where the degrader runs.
        progress: show a progress bar.
        record_extra: more provenance per pair from its seed (e.g. which LQ image gave its style).

    Returns:
        ``out_dir``.
    """
    from tqdm.auto import tqdm

    from data.atomic import atomic_write_json
    from restoration.degrader_data import pad_to_multiple
    from restoration.splits import patient_of

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    paths, names = pairs_items(hq_dirs, split)
    settings = dict(info) | {
        "seed": seed, "split": split, "lq_size": cfg.size, "hq_size": 2 * cfg.size, "preprocess": cfg.to_dict(),
    }  # fmt: skip
    meta_path = out / PAIRS_INFO_NAME
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        old_settings = {k: v for k, v in old.items() if k not in ("pairs", "complete")}
        now = json.loads(json.dumps(settings, default=str))
        if old_settings != now:
            changed = sorted(k for k in set(old_settings) | set(now) if old_settings.get(k) != now.get(k))
            raise ValueError(f"{out}: holds pairs made with other settings ({', '.join(changed)}); use a new folder")
    atomic_write_json(meta_path, settings | {"complete": False, "pairs": []})  # marks the run before any pair

    todo = [i for i, n in enumerate(names) if not ((out / "hq" / n).is_file() and (out / "lq" / n).is_file())]
    bar = tqdm(total=len(names), initial=len(names) - len(todo), desc=str(info.get("method", "pairs")), disable=not progress)
    k = 0
    while k < len(todo):
        batch = [todo[k]]
        first = hq_pair_images(paths[todo[k]], cfg)
        items = [first]
        while len(batch) < batch_size and k + len(batch) < len(todo):
            nxt = hq_pair_images(paths[todo[k + len(batch)]], cfg)
            if nxt[0].shape != first[0].shape:
                break
            batch.append(todo[k + len(batch)])
            items.append(nxt)
        x, (h, w) = pad_to_multiple(torch.cat([lq for _, lq in items]).to(device), multiple)
        with torch.no_grad():
            lq = degrade(x, [name_seed(seed, names[i]) for i in batch])[..., :h, :w]
        for j, i in enumerate(batch):
            write_png16(out / "hq" / names[i], to_uint16(items[j][0][0]))  # HQ first: "done" needs both files
            write_png16(out / "lq" / names[i], to_uint16(lq[j]))
        k += len(batch)
        bar.update(len(batch))
    bar.close()
    records = []
    for p, n in zip(paths, names, strict=True):
        rec = source_record(n, p)
        rec.setdefault("patient", patient_of(p))
        records.append(rec | (record_extra(name_seed(seed, n)) if record_extra else {}))
    atomic_write_json(meta_path, settings | {"complete": True, "pairs": records})
    return out
