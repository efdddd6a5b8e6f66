"""Logic of the restorer benchmarks (benchmarks/restorer_*.py): held-out guard, crop alignment, sampler parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from restorer_bench import check_held_out, load_pairs  # noqa: E402
from restorer_samplers import Sampler, crop_pairs  # noqa: E402

from data.images import write_png16  # noqa: E402
from restoration.splits import is_held_out  # noqa: E402


def patients() -> tuple[str, str]:
    """One held-out and one training patient id of the fixed split."""
    ids = [str(i) for i in range(100)]
    return next(p for p in ids if is_held_out(p)), next(p for p in ids if not is_held_out(p))


def pairs_folder(root: Path, patient: str) -> Path:
    """A 2-pair pairs folder (16 px HQ, 8 px LQ) whose HQ sources belong to ``patient``."""
    rng = np.random.default_rng(0)
    recs = []
    for name in ("a.png", "b.png"):
        hq = rng.integers(0, 65535, (16, 16), dtype=np.uint16)
        write_png16(root / "hq" / name, hq)
        write_png16(root / "lq" / name, hq[::2, ::2])
        recs.append({"name": name, "hq_source": f"/nowhere/{name}", "patient": patient})
    (root / "pairs.json").write_text(json.dumps({"method": "test", "pairs": recs}), encoding="utf-8")
    return root


def test_pairs_of_training_patients_are_refused(tmp_path: Path) -> None:
    held, train = patients()
    pairs = load_pairs(pairs_folder(tmp_path / "held", held), 5, 2)
    assert [n for n, _, _ in pairs] == ["a.png", "b.png"]
    assert pairs[0][1].shape == (1, 1, 8, 8) and pairs[0][2].shape == (1, 1, 16, 16)
    assert float(pairs[0][2].min()) >= -1.0 and float(pairs[0][2].max()) <= 1.0
    with pytest.raises(SystemExit, match="training patient"):
        load_pairs(pairs_folder(tmp_path / "train", train), 5, 2)
    with pytest.raises(SystemExit, match="not listed"):
        check_held_out(tmp_path / "held", ["c.png"])


def test_lq_crop_is_the_source_of_the_hq_crop() -> None:
    hq = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 1, 64, 64)
    lq = hq[..., ::2, ::2]  # nearest 2x down: each LQ pixel is a known HQ pixel
    lqc, hqc, where = crop_pairs([("x", lq, hq), ("y", lq, hq)], 2, 16, 2)
    assert lqc.shape == (2, 1, 8, 8) and hqc.shape == (2, 1, 16, 16)
    assert torch.equal(lqc, hqc[..., ::2, ::2])
    assert where[0] != where[1]  # fixed places differ between crops
    with pytest.raises(SystemExit):
        crop_pairs([("x", lq, hq)], 1, 15, 2)


def test_sampler_parsing() -> None:
    assert Sampler.parse("default") == Sampler(None, None, None)
    assert Sampler.parse("ddpm:1000:1") == Sampler("ddpm", 1000, 1.0)
    assert Sampler.parse("default:4") == Sampler(None, 4, None)
    for bad in ("euler:4", "ddim:0", "ddim:4:1.5", "ddim"):
        with pytest.raises(SystemExit):
            Sampler.parse(bad)
