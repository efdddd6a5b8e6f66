"""Classifier two-sample test: a small CNN trained from scratch to tell two image sets apart (ROC AUC, 0.5 = same).

The CNN sees random square crops of images that were resized to one common field-of-view scale, so pixel size
matches between the sets. Every image is scored exactly once by a network that never saw it (two-fold
cross-fitting with the folds split by group, e.g. patient), and the AUC is computed over all scores.
No downloaded weights; a fixed small budget (epochs x crops) keeps it cheap on CPU; seeded and deterministic.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TwoSampleConfig:
    """Budget of the classifier test.

    Args:
        crop: crop side in pixels (on the classifier-scale images).
        epochs: passes; each draws ``crops_per_image`` crops per image of the larger training set, per class.
        crops_per_image: crops per image and epoch.
        batch_size: crops per optimiser step (half from each class).
        lr: Adam learning rate.
        eval_grid: test crops per image side (eval_grid² fixed crops, scores averaged).
        repeats: independent runs (own folds, crops and initialisation) whose AUCs are averaged: with few groups
            (e.g. 3 CTs) one run's AUC moves by ±0.15 with the seed alone.
    """

    crop: int = 64
    epochs: int = 8
    crops_per_image: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    eval_grid: int = 3
    repeats: int = 1

    def __post_init__(self) -> None:
        for name in ("crop", "epochs", "crops_per_image", "batch_size", "eval_grid", "repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TwoSampleConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TwoSampleConfig.lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON reports."""
        return asdict(self)


def _net() -> nn.Module:
    """Four conv blocks (16-32-64-64 channels), global average pool, one logit."""
    layers: list[nn.Module] = []
    c_in = 1
    for c_out in (16, 32, 64, 64):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1))


def roc_auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """ROC AUC = P(score_pos > score_neg) + ½ P(tie) (Mann–Whitney U / (n_pos n_neg))."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(scores_pos, np.float64), np.asarray(scores_neg, np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("roc_auc needs at least one score in each class")
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def valid_corners(mask: np.ndarray, crop: int) -> np.ndarray:
    """Top-left corners (bool, (H−crop+1) x (W−crop+1)) whose crop lies wholly inside ``mask``.

    When no crop fits, the corners whose crop holds the most mask pixels.
    """
    m = np.asarray(mask, dtype=np.int64)
    s = np.pad(m.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = s[crop:, crop:] - s[:-crop, crop:] - s[crop:, :-crop] + s[:-crop, :-crop]
    return sums == sums.max() if sums.max() < crop * crop else sums == crop * crop


def _random_crops(
    images: np.ndarray, n: int, crop: int, rng: np.random.Generator, corners: list[np.ndarray | None] | None = None
) -> np.ndarray:
    """``n`` random crops (with replacement over images) from an N x H x W stack (inside each image's field when
    ``corners`` gives its valid top-left corners; None = anywhere)."""
    _, h, w = images.shape
    idx = rng.integers(0, images.shape[0], n)
    top = rng.integers(0, h - crop + 1, n)
    left = rng.integers(0, w - crop + 1, n)
    if corners is not None and any(c is not None for c in corners):
        pick = rng.random(n)  # drawn only when some image has a field: sets without one keep their crops
        for k, i in enumerate(idx):
            if corners[i] is not None:
                flat = np.flatnonzero(corners[i])
                top[k], left[k] = np.unravel_index(flat[int(pick[k] * len(flat))], corners[i].shape)
    return np.stack([images[i, t : t + crop, s : s + crop] for i, t, s in zip(idx, top, left)])


def _grid_crops(images: np.ndarray, crop: int, grid: int, corners: list[np.ndarray | None] | None = None) -> np.ndarray:
    """N x grid² fixed crops on a regular grid covering each image (or its field: the grid spans the valid corners'
    box and each point moves to its nearest valid corner)."""
    from scipy import ndimage

    _, h, w = images.shape
    out = []
    for i, img in enumerate(images):
        c = None if corners is None else corners[i]
        if c is None:
            tops = np.linspace(0, h - crop, grid).round().astype(int)
            lefts = np.linspace(0, w - crop, grid).round().astype(int)
            out.append([img[t : t + crop, s : s + crop] for t in tops for s in lefts])
            continue
        rows, cols = np.nonzero(c)
        near = ndimage.distance_transform_edt(~c, return_distances=False, return_indices=True)
        points = [
            (int(near[0][t, s]), int(near[1][t, s]))
            for t in np.linspace(rows.min(), rows.max(), grid).round().astype(int)
            for s in np.linspace(cols.min(), cols.max(), grid).round().astype(int)
        ]
        out.append([img[t : t + crop, s : s + crop] for t, s in points])
    return np.stack(out)


Corners = list[np.ndarray | None]


def _fit_and_score(
    train_a: np.ndarray,
    train_b: np.ndarray,
    test: np.ndarray,
    cfg: TwoSampleConfig,
    seed: int,
    corners: tuple[Corners | None, Corners | None, Corners | None] = (None, None, None),
) -> np.ndarray:
    """Train on crops of A (label 1) vs B (label 0); return each test image's mean logit over its grid crops."""
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    per_class = cfg.crops_per_image * max(len(train_a), len(train_b))
    half = max(1, cfg.batch_size // 2)
    net.train()
    for _ in range(cfg.epochs):
        xa = _random_crops(train_a, per_class, cfg.crop, rng, corners[0])
        xb = _random_crops(train_b, per_class, cfg.crop, rng, corners[1])
        for start in range(0, per_class, half):
            x = np.concatenate([xa[start : start + half], xb[start : start + half]])
            y = np.concatenate([np.ones(len(xa[start : start + half])), np.zeros(len(xb[start : start + half]))])
            logits = net(torch.from_numpy(x[:, None] * 2.0 - 1.0).float())[:, 0]
            loss = loss_fn(logits, torch.from_numpy(y).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    crops = _grid_crops(test, cfg.crop, cfg.eval_grid, corners[2])  # N x G x c x c
    with torch.no_grad():
        x = torch.from_numpy(crops.reshape(-1, 1, cfg.crop, cfg.crop) * 2.0 - 1.0).float()
        logits = torch.cat([net(chunk)[:, 0] for chunk in x.split(256)])
    return logits.reshape(len(test), -1).mean(dim=1).numpy().astype(np.float64)


def _corners(masks: np.ndarray | None, n: int, crop: int) -> Corners | None:
    """Valid crop corners per image (None for an image whose mask is all True; None for no masks at all)."""
    if masks is None:
        return None
    if len(masks) != n:
        raise ValueError(f"two-sample test: {len(masks)} masks for {n} images")
    out: Corners = [None if m.all() else valid_corners(m, crop) for m in np.asarray(masks, dtype=bool)]
    return None if all(c is None for c in out) else out


def _two_folds(groups: Sequence[Hashable], rng: np.random.Generator) -> np.ndarray:
    """Fold 0/1 per item, whole groups on one side, groups shuffled by ``rng`` and alternated."""
    names = sorted(set(groups), key=str)
    order = rng.permutation(len(names))
    fold_of = {names[g]: i % 2 for i, g in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=int)


def classifier_two_sample_test(
    a: np.ndarray,
    b: np.ndarray,
    groups_a: Sequence[Hashable] | None = None,
    groups_b: Sequence[Hashable] | None = None,
    cfg: TwoSampleConfig | None = None,
    seed: int = 0,
    masks_a: np.ndarray | None = None,
    masks_b: np.ndarray | None = None,
) -> dict[str, Any]:
    """ROC AUC of a from-scratch CNN separating set A from set B, every image scored out of fold.

    Args:
        a, b: N x H x W float stacks in [0, 1], same H x W (a common field-of-view scale), H, W >= cfg.crop.
        groups_a, groups_b: group (e.g. patient) per image; a group never lies in both folds. Default: one per image.
        masks_a, masks_b: optional N x H x W bool fields (e.g. the exposed field): every crop, in training and
            scoring, lies inside its image's field (an all-True mask changes nothing).
        cfg: budget; seed: seeds folds, crops and network initialisation.

    Returns:
        {"auc" (mean over ``cfg.repeats`` runs), "auc_runs", "n_a", "n_b", "config"}; AUC 0.5 means the sets
        cannot be told apart at this budget.
    """
    cfg = cfg or TwoSampleConfig()
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"two-sample test needs two N x H x W stacks of one size, got {a.shape} and {b.shape}")
    if min(a.shape[1:]) < cfg.crop:
        raise ValueError(f"images of {a.shape[1]}x{a.shape[2]} px are smaller than the crop ({cfg.crop} px)")
    ga = list(groups_a) if groups_a is not None else [("a", i) for i in range(len(a))]
    gb = list(groups_b) if groups_b is not None else [("b", i) for i in range(len(b))]
    if len(set(map(str, ga))) < 2 or len(set(map(str, gb))) < 2:
        raise ValueError("two-sample test needs at least two groups (patients/images) in each set")
    aucs = []
    for r in range(cfg.repeats):
        # Repeat 0 is the single-run test of ``seed``; each further repeat gets its own entropy.
        ss = np.random.SeedSequence(seed if r == 0 else [seed, r])
        aucs.append(_one_run(a, b, ga, gb, cfg, ss, masks_a, masks_b))
    return {
        "auc": float(np.mean(aucs)), "auc_runs": [float(x) for x in aucs], "n_a": int(len(a)), "n_b": int(len(b)),
        "config": cfg.to_dict(),
    }  # fmt: skip


def _one_run(
    a: np.ndarray,
    b: np.ndarray,
    ga: list[Hashable],
    gb: list[Hashable],
    cfg: TwoSampleConfig,
    ss: np.random.SeedSequence,
    masks_a: np.ndarray | None,
    masks_b: np.ndarray | None,
) -> float:
    """One cross-fitted run: folds, crops and networks from ``ss``; the AUC over all out-of-fold scores."""
    fold_rng, *fit_seeds = (np.random.default_rng(s) for s in ss.spawn(3))
    fa, fb = _two_folds(ga, fold_rng), _two_folds(gb, fold_rng)
    scores_a = np.zeros(len(a))
    scores_b = np.zeros(len(b))
    ca, cb = _corners(masks_a, len(a), cfg.crop), _corners(masks_b, len(b), cfg.crop)
    pick = lambda cs, sel: None if cs is None else [c for c, keep in zip(cs, sel) if keep]  # noqa: E731
    for k in (0, 1):
        test = np.concatenate([a[fa == k], b[fb == k]])
        test_corners = None if ca is None and cb is None else (
            (pick(ca, fa == k) or [None] * int((fa == k).sum())) + (pick(cb, fb == k) or [None] * int((fb == k).sum()))
        )  # fmt: skip
        corners = (pick(ca, fa != k), pick(cb, fb != k), test_corners)
        s = _fit_and_score(a[fa != k], b[fb != k], test, cfg, int(fit_seeds[k].integers(2**31)), corners)
        scores_a[fa == k] = s[: int((fa == k).sum())]
        scores_b[fb == k] = s[int((fa == k).sum()) :]
    return roc_auc(scores_a, scores_b)
