"""Logic of the restorer benchmarks (benchmarks/restorer_*.py): the held-out guard on pairs folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from restorer_bench import check_held_out, pairs_of  # noqa: E402

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
    hq, lq = pairs_of(pairs_folder(tmp_path / "held", held), 5)
    assert [p.name for p in hq] == ["a.png", "b.png"] and [p.parent.name for p in lq] == ["lq", "lq"]
    assert len(pairs_of(tmp_path / "held", 1)[0]) == 1
    with pytest.raises(SystemExit, match="training patient"):
        pairs_of(pairs_folder(tmp_path / "train", train), 5)
    with pytest.raises(SystemExit, match="not listed"):
        check_held_out(tmp_path / "held", ["c.png"])


def test_realism_verdict_per_figure() -> None:
    from restorer_realism import closer

    raw = {"classifier_auc": 0.98, "spectrum_distance": 0.5, "fine_detail_ratio": 0.5, "lung_histogram_distance": 0.2,
           "background_share": 0.01, "background_share_reference": 0.06}  # fmt: skip
    # nearer 0.5 / smaller / ratio nearer 1 in log (1.8 beats 0.5: |log 1.8| < |log 0.5|) / share nearer the real one
    enh = {**raw, "classifier_auc": 0.3, "spectrum_distance": 0.4, "fine_detail_ratio": 1.8, "background_share": 0.1}
    assert all(closer(k, enh, raw) for k in ("classifier_auc", "spectrum_distance", "fine_detail_ratio", "background_share"))
    assert not closer("lung_histogram_distance", enh, raw)  # equal is not closer
    assert not closer("classifier_auc", {**raw, "classifier_auc": 0.01}, raw)  # 0.01 is further from 0.5 than 0.98
