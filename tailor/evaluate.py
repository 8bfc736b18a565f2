"""Full-ranking evaluation of recommenders on held-out events (DESIGN.md, "Evaluation protocol").

Users and items are dense integer indices here; every recommender scores the whole catalogue,
the user's known items are excluded, and one held-out target per user is looked for in the top K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

PAD = -1  # fills a top-k row when fewer than k items are left to recommend
_TOP_K_CHUNK_ELEMENTS = 1 << 24

# Column order of `metrics_table`: accuracy first, then the long-tail view.
_METRIC_ORDER = ("recall", "ndcg", "mrr", "tail_recall", "coverage", "aplt", "novelty")


class Recommender(Protocol):
    """Anything that scores every item for a batch of users."""

    name: str
    n_items: int

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores for each user's history (int64 item indices in time order, maybe empty).

        Returns float32 of shape (len(histories), n_items); higher is better.
        """
        ...


@dataclass
class EvalResult:
    """One model's metrics and the lists they were computed from."""

    name: str
    metrics: dict[str, float]
    top: np.ndarray  # (n_users, max(ks)) item indices, PAD where the list ran short


def top_k(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> np.ndarray:
    """The k best items per user, best first, never an item in `exclude[u]`.

    Exact ties go to the lower item index, so lists are deterministic. NaN and -inf scores
    rank below every finite score (tied with each other, by index). Rows with fewer than k
    eligible items are padded with PAD (-1). Returns int64 of shape (n_users, k).
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (users x items), got shape {scores.shape}")
    n_users, n_items = scores.shape
    if len(exclude) != n_users:
        raise ValueError(f"exclude has {len(exclude)} rows for {n_users} users of scores")
    out = np.full((n_users, k), PAD, dtype=np.int64)
    if n_users == 0 or n_items == 0:
        return out
    # argpartition allocates an int64 index per score; chunks of rows cap that at ~128 MB.
    step = max(1, _TOP_K_CHUNK_ELEMENTS // n_items)
    for start in range(0, n_users, step):
        stop = min(start + step, n_users)
        out[start:stop, : min(k, n_items)] = _top_k_rows(scores[start:stop], exclude[start:stop], k)
    return out


def _top_k_rows(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> np.ndarray:
    n_users, n_items = scores.shape
    kk = min(k, n_items)
    dtype = scores.dtype if np.issubdtype(scores.dtype, np.floating) else np.float64
    work = np.array(scores, dtype=dtype)  # a copy: the caller's scores stay untouched
    # Excluded items alone hold -inf, so a -inf in the partition marks padding; the model's own
    # NaN / -inf go to the lowest finite value instead and stay eligible.
    lowest = np.finfo(dtype).min
    work[np.isnan(work) | (work == -np.inf)] = lowest
    lengths = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=n_users)
    if lengths.sum():
        cols = np.concatenate([np.asarray(e, dtype=np.int64).ravel() for e in exclude])
        if cols.min() < 0 or cols.max() >= n_items:
            raise ValueError(f"exclude holds item indices outside 0..{n_items - 1}")
        work[np.repeat(np.arange(n_users), lengths), cols] = -np.inf

    cand = np.argpartition(work, n_items - kk, axis=1)[:, n_items - kk :]
    vals = np.take_along_axis(work, cand, axis=1)
    threshold = vals.min(axis=1)

    # argpartition picks an arbitrary member of a tie at the cut: where more than kk items reach
    # the threshold, re-choose the tied ones by index (rows ending in padding have no such tie).
    reach = (work >= threshold[:, None]).sum(axis=1)
    tied = np.flatnonzero((reach > kk) & (threshold > -np.inf))
    if tied.size:
        sub = work[tied]
        cut = threshold[tied][:, None]
        above = sub > cut
        at = sub == cut
        room = kk - above.sum(axis=1, keepdims=True)
        chosen = above | (at & (np.cumsum(at, axis=1, dtype=np.int32) <= room))
        cand[tied] = np.nonzero(chosen)[1].reshape(len(tied), kk)
        vals[tied] = np.take_along_axis(sub, cand[tied], axis=1)

    order = np.lexsort((cand, -vals), axis=1)
    cand = np.take_along_axis(cand, order, axis=1)
    cand[np.take_along_axis(vals, order, axis=1) == -np.inf] = PAD
    return cand


def item_popularity(train_items: np.ndarray, n_items: int) -> np.ndarray:
    """How many training events each item has (int64, length n_items)."""
    items = np.asarray(train_items, dtype=np.int64).ravel()
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"train_items holds item indices outside 0..{n_items - 1}")
    return np.bincount(items, minlength=n_items).astype(np.int64)


def head_mask(popularity: np.ndarray, head_share: float) -> np.ndarray:
    """True for head items: the ceil(head_share * n_items) most popular items in train.

    The count is over the whole catalogue, items without any training event included, so the
    head has the same size for every model and split; ties in popularity go to the lower item
    index. When fewer items than that have events, some zero-popularity items fill the head.
    """
    if not 0.0 <= head_share <= 1.0:
        raise ValueError(f"head_share must be within [0, 1], got {head_share}")
    popularity = np.asarray(popularity)
    n_items = len(popularity)
    # Rounded first so that e.g. 0.1 * 30 = 3.0000000000000004 does not become a head of 4.
    n_head = min(n_items, math.ceil(round(head_share * n_items, 9)))
    order = np.argsort(-popularity, kind="stable")
    mask = np.zeros(n_items, dtype=bool)
    mask[order[:n_head]] = True
    return mask


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


def evaluate_recommender(
    rec: Recommender,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    popularity: np.ndarray,
    head_share: float,
    ks: Sequence[int],
    n_train_users: int,
    batch_users: int = 1024,
) -> EvalResult:
    """Score users in batches, keep each one's top max(ks), and compute `ranking_metrics`.

    Batching bounds memory at batch_users x n_items scores, whatever the number of users.
    """
    if batch_users < 1:
        raise ValueError(f"batch_users must be positive, got {batch_users}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be non-empty positive integers, got {list(ks)}")
    targets = np.asarray(targets, dtype=np.int64)
    n_users = len(histories)
    if len(targets) != n_users or len(exclude) != n_users:
        raise ValueError(
            f"histories ({n_users}), targets ({len(targets)}) and exclude ({len(exclude)}) "
            "must cover the same users"
        )
    if rec.n_items != len(popularity):
        raise ValueError(
            f"{rec.name} scores {rec.n_items} items but popularity covers {len(popularity)}"
        )
    k = max(ks)
    parts = [np.empty((0, k), dtype=np.int64)]
    for start in range(0, n_users, batch_users):
        stop = min(start + batch_users, n_users)
        scores = np.asarray(rec.score(histories[start:stop]))
        if scores.shape != (stop - start, rec.n_items):
            raise ValueError(
                f"{rec.name}.score returned shape {scores.shape}, "
                f"expected {(stop - start, rec.n_items)}"
            )
        parts.append(top_k(scores, exclude[start:stop], k))
    top = np.concatenate(parts)
    metrics = ranking_metrics(top, targets, popularity, head_share, ks, n_train_users)
    return EvalResult(name=rec.name, metrics=metrics, top=top)


def _column_key(name: str) -> tuple[int, str, int]:
    base, sep, k = name.rpartition("_at_")
    if sep and k.isdigit() and base in _METRIC_ORDER:
        return (_METRIC_ORDER.index(base), base, int(k))
    # Unknown metrics keep a stable place after the known ones.
    return (len(_METRIC_ORDER), name, 0)


def _format_value(name: str, value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if name == "n_users":
        return str(int(value))
    return f"{value:.4f}"


def metrics_table(results: Sequence[EvalResult], prefix: str = "") -> str:
    """A markdown table, one row per model, one column per metric (4 decimals).

    Columns run recall, ndcg, mrr, tail_recall, coverage, aplt, novelty (each by k), then any
    other metric, then n_users. `prefix` is put before every metric name in the header (e.g.
    "valid_"), so the table can use the same names as the logged metrics. A metric a model
    lacks shows as an empty cell.
    """
    names = {name for result in results for name in result.metrics}
    ordered = sorted(names - {"n_users"}, key=_column_key)
    if "n_users" in names:
        ordered.append("n_users")
    header = ["model", *(f"{prefix}{name}" for name in ordered)]
    lines = [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * len(ordered),
    ]
    for result in results:
        cells = [
            _format_value(name, result.metrics[name]) if name in result.metrics else ""
            for name in ordered
        ]
        lines.append("| " + " | ".join([result.name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def exposure(top: np.ndarray, n_items: int) -> np.ndarray:
    """How many lists each item appears in (int64, length n_items); padding is ignored."""
    top = np.asarray(top)
    items = top[top >= 0].astype(np.int64)
    if items.size and items.max() >= n_items:
        raise ValueError(f"top holds item indices outside 0..{n_items - 1}")
    return np.bincount(items, minlength=n_items).astype(np.int64)
