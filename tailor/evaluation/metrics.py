"""Ranking metrics on held-out events and the paired bootstrap behind every claimed gain.

Users and items are dense integer indices here; lists come from `tailor.ranking` (full ranking
over the whole catalogue, the user's known items excluded) and one held-out target per user is
looked for in the top K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from tailor.ranking.tail import head_mask


def _hit_ranks(top: np.ndarray, targets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user: whether the target is in the first k entries, and its 0-based rank there."""
    top = np.asarray(top)
    targets = np.asarray(targets, dtype=np.int64)
    if top.ndim != 2 or len(top) != len(targets):
        raise ValueError(f"top {top.shape} and targets {targets.shape} disagree on users")
    if k > top.shape[1]:
        raise ValueError(f"k={k} exceeds the {top.shape[1]} entries per list")
    head = top[:, :k]
    # Padding never matches, even against a PAD target.
    matches = (head == targets[:, None]) & (head >= 0)
    hit = matches.any(axis=1)
    rank = np.where(hit, matches.argmax(axis=1), k)
    return hit, rank


def per_user_metric(
    top: np.ndarray, targets: np.ndarray, metric: Literal["recall", "ndcg", "mrr"], k: int
) -> np.ndarray:
    """Each user's value of an accuracy metric at k (float64), for the paired bootstrap."""
    hit, rank = _hit_ranks(top, targets, k)
    if metric == "recall":
        return hit.astype(np.float64)
    if metric == "ndcg":
        return np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    if metric == "mrr":
        return np.where(hit, 1.0 / (rank + 1.0), 0.0)
    raise ValueError(f"unknown metric {metric!r}; choose recall, ndcg or mrr")


def _mean(values: np.ndarray) -> float:
    # nan rather than numpy's empty-mean warning: "no users of this kind" is a normal outcome.
    return float(values.mean()) if values.size else math.nan


def ranking_metrics(
    top: np.ndarray,
    targets: np.ndarray,
    popularity: np.ndarray,
    head_share: float,
    ks: Sequence[int],
    n_train_users: int,
) -> dict[str, float]:
    """Leave-one-out ranking metrics: one held-out target item per user.

    For each k in ks: recall_at_k (hit rate), ndcg_at_k (1/log2(rank+2) on a hit), mrr_at_k
    (1/(rank+1) on a hit), coverage_at_k (distinct listed items / n_items), tail_recall_at_k
    (recall over users whose target is a tail item, nan if none), aplt_at_k (mean over users of
    the share of tail items among their listed items; users with an empty list are left out),
    novelty_at_k (mean over listed items of -log2(p), p = max(popularity, 1) / n_train_users).
    Padding (-1) is a miss and is ignored by coverage, aplt and novelty. Also "n_users".
    """
    top = np.asarray(top)
    targets = np.asarray(targets, dtype=np.int64)
    popularity = np.asarray(popularity)
    n_items = len(popularity)
    if n_train_users < 1:
        raise ValueError(f"n_train_users must be positive, got {n_train_users}")
    tail = ~head_mask(popularity, head_share)
    # Clipping keeps never-seen items finite: they are treated as seen once.
    self_info = -np.log2(np.maximum(popularity, 1) / n_train_users)
    tail_target = np.zeros(len(targets), dtype=bool)
    known = (targets >= 0) & (targets < n_items)
    tail_target[known] = tail[targets[known]]

    metrics: dict[str, float] = {"n_users": float(len(targets))}
    for k in sorted(set(ks)):
        hit, rank = _hit_ranks(top, targets, k)
        head = top[:, :k]
        listed = head >= 0
        items = head[listed]
        n_listed = listed.sum(axis=1)
        tail_in_list = np.zeros_like(head, dtype=bool)
        tail_in_list[listed] = tail[items]
        has_list = n_listed > 0
        aplt = tail_in_list.sum(axis=1)[has_list] / n_listed[has_list]

        metrics[f"recall_at_{k}"] = _mean(hit.astype(np.float64))
        metrics[f"ndcg_at_{k}"] = _mean(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0))
        metrics[f"mrr_at_{k}"] = _mean(np.where(hit, 1.0 / (rank + 1.0), 0.0))
        metrics[f"coverage_at_{k}"] = len(np.unique(items)) / n_items if n_items else math.nan
        metrics[f"tail_recall_at_{k}"] = _mean(hit[tail_target].astype(np.float64))
        metrics[f"aplt_at_{k}"] = _mean(aplt)
        metrics[f"novelty_at_{k}"] = _mean(self_info[items])
    return metrics


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a - b) over users and its 95 % percentile interval from resampling users.

    a and b are per-user values of the same metric for two models on the same users, so the
    pairing removes the between-user variance that would swamp a small difference.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a {a.shape} and b {b.shape} must be 1-D arrays of the same users")
    if a.size == 0:
        raise ValueError("paired_bootstrap needs at least one user")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    diff = a - b
    n = diff.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    # Chunks keep the index matrix around 8 MB whatever the number of users.
    chunk = max(1, 1_000_000 // n)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def clustered_bootstrap(
    values: np.ndarray,
    clusters: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of per-case values and its 95 % interval from resampling whole clusters.

    Cases of one cluster (the events on one cold item) are not independent: when two items
    make most of the hits, resampling events hides that the estimate rests on two items.
    Drawing clusters with replacement and taking every case of each gives the interval a
    new draw of items would see. For a paired difference, pass `a - b` as `values`.
    Returns (mean, low, high); the mean is the plain mean over cases.
    """
    values = np.asarray(values, dtype=np.float64)
    clusters = np.asarray(clusters)
    if values.shape != clusters.shape or values.ndim != 1:
        raise ValueError(f"values {values.shape} and clusters {clusters.shape} must be 1-D alike")
    if values.size == 0:
        raise ValueError("clustered_bootstrap needs at least one case")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    _, which = np.unique(clusters, return_inverse=True)
    sums = np.bincount(which, weights=values)
    counts = np.bincount(which).astype(np.float64)
    n = len(sums)
    rng = np.random.default_rng(seed)
    # How often each cluster is drawn, per resample: multinomial counts over the clusters.
    draws = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
    means = (draws @ sums) / (draws @ counts)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def exposure(top: np.ndarray, n_items: int) -> np.ndarray:
    """How many lists each item appears in (int64, length n_items); padding is ignored."""
    top = np.asarray(top)
    items = top[top >= 0].astype(np.int64)
    if items.size and items.max() >= n_items:
        raise ValueError(f"top holds item indices outside 0..{n_items - 1}")
    return np.bincount(items, minlength=n_items).astype(np.int64)
