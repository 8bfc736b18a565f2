"""The one ranking path: candidates -> drop what a user must not get -> tail-aware re-ranking.

Evaluation (every model and baseline), the champion re-scoring, the nightly refresh and the
live service all turn scores into lists here, so a list means the same thing wherever it is
made. Candidates come from one of two sources, and everything after them is shared:

- `rank_index`: an inner-product index over item vectors (the served model: its user vector
  times each item vector is the score). The search over-fetches by the longest exclusion, so
  removing seen items still leaves a full pool.
- `rank_scores`: a dense (users x items) score matrix, for models without vectors (the
  collaborative baselines, a profile's borrowed shares). A score of -inf means "cannot rank
  this item" and keeps it out of the list; NaN ranks last but stays eligible.

The pool (`RankPolicy.candidates`, 200 by default) then goes through `tailor.ranking.rerank`
at `RankPolicy.strength`; at strength 0 the first `k` candidates are the list.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from tailor.ranking.rerank import rerank_tail_scored
from tailor.ranking.topk import PAD, top_k


@dataclass(frozen=True)
class RankPolicy:
    """How long a list is and how much it leans towards the tail."""

    k: int
    strength: float = 0.0  # tail-aware re-ranking: 0 = the model's order, 1 = tail first
    candidates: int = 200  # the pool the re-ranker chooses from
    is_tail: np.ndarray | None = None  # bool per item position; needed when strength > 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be positive, got {self.k}")
        if not 0.0 <= self.strength <= 1.0:  # also rejects NaN
            raise ValueError(f"strength must be within [0, 1], got {self.strength}")
        if self.strength > 0 and self.is_tail is None:
            raise ValueError("tail-aware re-ranking (strength > 0) needs is_tail")

    @property
    def pool(self) -> int:
        return max(self.k, self.candidates) if self.strength > 0 else self.k


@dataclass
class Ranked:
    """Lists for a batch of users, best first."""

    items: np.ndarray  # (n_users, k) int64 item positions, PAD (-1) where a list ran short
    scores: np.ndarray  # (n_users, k) float32 model scores, -inf where padded

    @classmethod
    def concat(cls, parts: Sequence[Ranked], k: int) -> Ranked:
        if not parts:
            return cls(np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32))
        return cls(
            np.concatenate([p.items for p in parts]), np.concatenate([p.scores for p in parts])
        )

    def row(self, i: int) -> tuple[list[int], list[float]]:
        """One user's list without padding."""
        keep = self.items[i] >= 0
        return self.items[i][keep].tolist(), self.scores[i][keep].tolist()


def rank_scores(
    scores: np.ndarray, excluded: Sequence[Collection[int]], policy: RankPolicy
) -> Ranked:
    """Lists from a dense score matrix; `excluded[u]` are positions user u must not get."""
    scores = np.asarray(scores)
    if policy.is_tail is not None and len(policy.is_tail) != scores.shape[-1]:
        raise ValueError(
            f"is_tail has {len(policy.is_tail)} flags but the scores cover {scores.shape[-1]} items"
        )
    exclude = [np.fromiter(e, dtype=np.int64, count=len(e)) for e in excluded]
    candidates = top_k(scores, exclude, policy.pool)
    real = candidates >= 0
    gathered = np.take_along_axis(scores, np.where(real, candidates, 0), axis=1)
    gathered = np.where(real, gathered, -np.inf).astype(np.float32)
    # A score of -inf means the model cannot rank the item at all (an id model and an item it
    # never trained on): never a candidate, so the re-ranker cannot lift it into a list.
    unrankable = np.isneginf(gathered) & real
    if unrankable.any():
        order = np.argsort(unrankable, axis=1, kind="stable")
        candidates = np.take_along_axis(candidates, order, axis=1)
        gathered = np.take_along_axis(gathered, order, axis=1)
        dropped = np.take_along_axis(unrankable, order, axis=1)
        candidates[dropped] = PAD
    return _finish(candidates, gathered, policy)


def rank_index(
    index, queries: np.ndarray, excluded: Sequence[Collection[int]], policy: RankPolicy
) -> Ranked:
    """Lists from an inner-product index (faiss); `excluded[u]` as in `rank_scores`."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    n = len(queries)
    pool = policy.pool
    items = np.full((n, pool), PAD, dtype=np.int64)
    scores = np.full((n, pool), -np.inf, dtype=np.float32)
    longest = max((len(e) for e in excluded), default=0)
    fetch = min(int(index.ntotal), pool + longest)
    if n == 0 or fetch == 0:
        return _finish(items, scores, policy)
    found_scores, found = index.search(queries, fetch)
    keep = (found >= 0) & ~_excluded_mask(found, excluded)
    # Kept hits move to the front of their row in search order (a stable sort on "dropped"),
    # so no per-item Python loop: millions of users stay cheap.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :pool]
    width = order.shape[1]
    taken = np.take_along_axis(keep, order, axis=1)
    items[:, :width] = np.where(taken, np.take_along_axis(found, order, axis=1), PAD)
    scores[:, :width] = np.where(taken, np.take_along_axis(found_scores, order, axis=1), -np.inf)
    return _finish(items, scores, policy)


def _excluded_mask(found: np.ndarray, excluded: Sequence[Collection[int]]) -> np.ndarray:
    """True where found[u, j] is in excluded[u], for every row at once."""
    rows = [np.fromiter(e, dtype=np.int64, count=len(e)) for e in excluded]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if not lengths.sum():
        return np.zeros(found.shape, dtype=bool)
    width = int(max(found.max(initial=0), max((r.max(initial=0) for r in rows), default=0))) + 1
    # One key per (user, item): user * width + item, compared in a single np.isin.
    owners = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    banned = owners * width + np.concatenate(rows)
    keys = np.arange(len(found), dtype=np.int64)[:, None] * width + np.maximum(found, 0)
    return np.isin(keys, banned)


def rerank_pool(pool: Ranked, policy: RankPolicy) -> Ranked:
    """`policy` applied to candidates already found: `pool` holds each user's first
    `policy.pool` candidates in model order (a strength-0 ranking of that length), so the lists
    are the ones ranking again would give, without searching again (a sweep of strengths)."""
    if pool.items.shape[1] < policy.pool:
        raise ValueError(
            f"the pool has {pool.items.shape[1]} candidates, the policy needs {policy.pool}"
        )
    return _finish(pool.items, pool.scores, policy)


def _finish(candidates: np.ndarray, scores: np.ndarray, policy: RankPolicy) -> Ranked:
    k = policy.k
    if policy.strength > 0:
        chosen, chosen_scores = rerank_tail_scored(
            candidates, scores, policy.is_tail, policy.strength, k
        )
        return Ranked(chosen, chosen_scores.astype(np.float32))
    out_items = np.full((len(candidates), k), PAD, dtype=np.int64)
    out_scores = np.full((len(candidates), k), -np.inf, dtype=np.float32)
    width = min(k, candidates.shape[1])
    out_items[:, :width] = candidates[:, :width]
    out_scores[:, :width] = scores[:, :width]
    return Ranked(out_items, out_scores)


def rank_histories(
    model,
    index,
    histories: Sequence[np.ndarray],
    policy: RankPolicy,
    batch_users: int = 1024,
) -> Ranked:
    """Lists for users known by their histories (item positions, oldest first) under a model
    with user and item vectors (`model.user_vectors`) and an index over its item vectors.

    A user's own history is excluded from their list.
    """
    parts = []
    for start in range(0, len(histories), batch_users):
        chunk = histories[start : start + batch_users]
        users = model.user_vectors(chunk)
        seen = [set(np.asarray(h).tolist()) for h in chunk]
        parts.append(rank_index(index, users, seen, policy))
    return Ranked.concat(parts, policy.k)


def rank_dense(
    model, histories: Sequence[np.ndarray], policy: RankPolicy, batch_users: int = 1024
) -> Ranked:
    """`rank_histories` for models that only score (`model.score`: users x items)."""
    parts = []
    for start in range(0, len(histories), batch_users):
        chunk = histories[start : start + batch_users]
        parts.append(rank_scores(model.score(chunk), chunk, policy))
    return Ranked.concat(parts, policy.k)
