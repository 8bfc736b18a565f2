"""Tail-aware re-ranking: give long-tail items a fair share of each list after retrieval.

The re-ranker is a greedy, xQuAD-style list builder over two categories, head and tail (tail
items are ``~head_mask(popularity, head_share)``). Position by position it appends the
remaining candidate ``i`` that maximises

    (1 - strength) * rel(i) + strength * tail_bonus(i, S)

where ``S`` is the list built so far and

* ``rel(i)`` is the user's model score min-max normalised over the user's candidates to [0, 1]
  (best candidate 1, worst 0), so one strength means the same for every user and every model;
* ``tail_bonus(i, S) = is_tail(i) * (1 - n_tail(S) / (|S| + 1))``: the share of the list,
  counting the slot being filled, that tail items do not hold yet. An empty list gives a tail
  candidate the full bonus of 1; every tail item already listed lowers it, so once the list has
  its share of tail items the relevance term wins back and moderate strengths do not produce
  all-tail lists. The bonus never reaches 0 (at least 1 / (|S| + 1)), which is what makes
  strength 1 put every tail candidate first.

``strength`` is the one knob, in [0, 1]:

* 0: the model's ranking unchanged (the first k candidates exactly);
* in between: a tail candidate displaces a head candidate at a position when
  ``strength * tail_bonus > (1 - strength) * (rel(head) - rel(tail))``; larger strengths
  accept larger relevance losses, so lists hold more tail items;
* 1: relevance is ignored between the categories: tail candidates first (in the model's
  order), then head candidates (in the model's order).

Ties in the objective go to the candidate the model ranked higher, so results are
deterministic. Within a category the objective is the model's order, so each step only has
to compare the best remaining head candidate with the best remaining tail candidate; the
greedy costs O(n_users * (n_cand + k)) and is vectorised over users.
"""

from __future__ import annotations

import math

import numpy as np

from tailor.ranking.topk import PAD

_BLOCK_ROWS = 16_384  # users re-ranked together; bounds the temporaries at a few tens of MB


def rerank_tail(
    candidates: np.ndarray,
    scores: np.ndarray,
    is_tail: np.ndarray,
    strength: float,
    k: int,
) -> np.ndarray:
    """Re-rank each user's candidates so that tail items get exposure; see the module docs.

    candidates: (n_users, n_cand) int item indices, best first, padded at the end with -1.
    scores: (n_users, n_cand) model scores aligned with candidates, non-increasing along each
        row over the real candidates (as `tailor.ranking.topk.top_k` gives them); the scores of
        padding are ignored. NaN and -inf count as the lowest relevance, +inf as the highest.
    is_tail: bool (n_items,), True for long-tail items.
    strength: in [0, 1]; 0 returns candidates[:, :k] unchanged, 1 puts tail items first.
    k: length of the returned lists.

    Returns int64 (n_users, k), padded with -1 where a user has fewer than k candidates; never
    a duplicate unless `candidates` holds one.
    """
    candidates, scores, is_tail, strength = _validate(candidates, scores, is_tail, strength, k)
    n_users, n_cand = candidates.shape
    out = np.full((n_users, k), PAD, dtype=np.int64)
    width = min(k, n_cand)
    for start in range(0, n_users, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, n_users)
        block, block_scores = candidates[start:stop], scores[start:stop]
        _check_order(block, block_scores)
        if strength == 0.0 or width == 0:
            out[start:stop, :width] = block[:, :width]
        elif stop - start == 1:
            # One user (a live request): plain Python beats 20 rounds of array calls.
            out[start] = _rerank_one(block[0], block_scores[0], is_tail, strength, k)
        else:
            out[start:stop] = _rerank_block(block, block_scores, is_tail, strength, k)
    return out


def _validate(
    candidates: np.ndarray, scores: np.ndarray, is_tail: np.ndarray, strength: float, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}") from None
    if not 0.0 <= strength <= 1.0:  # also rejects NaN
        raise ValueError(f"strength must be within [0, 1], got {strength}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    candidates = np.asarray(candidates)
    scores = np.asarray(scores)
    is_tail = np.asarray(is_tail)
    if candidates.ndim != 2:
        raise ValueError(f"candidates must be 2-D (users x candidates), got {candidates.shape}")
    if not np.issubdtype(candidates.dtype, np.integer):
        raise ValueError(f"candidates must hold integer item indices, got {candidates.dtype}")
    if scores.shape != candidates.shape:
        raise ValueError(
            f"scores has shape {scores.shape} but candidates has shape {candidates.shape}"
        )
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise ValueError(f"scores must be numeric, got {scores.dtype}")
    if is_tail.ndim != 1 or is_tail.dtype != np.bool_:
        raise ValueError(
            f"is_tail must be a 1-D bool array over items, got {is_tail.dtype} {is_tail.shape}"
        )
    n_items = len(is_tail)
    if candidates.size and (candidates.min() < PAD or candidates.max() >= n_items):
        raise ValueError(f"candidates hold values outside -1..{n_items - 1} (items + padding)")
    return candidates.astype(np.int64, copy=False), scores, is_tail, strength


def _check_order(candidates: np.ndarray, scores: np.ndarray) -> None:
    real = candidates >= 0
    if np.any(real[:, 1:] & ~real[:, :-1]):
        raise ValueError("candidates must be padded with -1 at the end of a row only")
    key = np.where(real & ~np.isnan(scores), scores, -np.inf)
    if np.any(key[:, 1:] > key[:, :-1]):
        raise ValueError("scores must be non-increasing along each row (candidates best first)")


def _relevance_range(scores: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the lowest finite candidate score and the finite range (1 where it is 0)."""
    finite = real & np.isfinite(scores)
    lo = np.where(finite, scores, np.inf).min(axis=1).astype(np.float64)
    hi = np.where(finite, scores, -np.inf).max(axis=1).astype(np.float64)
    any_finite = finite.any(axis=1)
    lo = np.where(any_finite, lo, 0.0)
    span = np.where(any_finite & (hi > lo), hi - lo, 1.0)
    return lo, span


def _relevance(raw: np.ndarray, lo: np.ndarray, span: np.ndarray) -> np.ndarray:
    raw = raw.astype(np.float64)
    with np.errstate(invalid="ignore"):
        rel = (raw - lo) / span
    rel = np.where(np.isposinf(raw), 1.0, rel)
    return np.where(np.isnan(raw) | np.isneginf(raw), 0.0, rel)


def _first_k_columns(mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first k column indices where mask holds (padded with 0), and their count."""
    n_rows = len(mask)
    rank = np.cumsum(mask, axis=1, dtype=np.int32) - 1
    keep = mask & (rank < k)
    rows, cols = np.nonzero(keep)
    first = np.zeros((n_rows, k), dtype=np.int64)
    first[rows, rank[rows, cols]] = cols
    return first, np.minimum(mask.sum(axis=1), k)


def rerank_tail_scored(
    candidates: np.ndarray, scores: np.ndarray, is_tail: np.ndarray, strength: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """`rerank_tail`, plus each chosen item's score from `scores` (-inf where padded)."""
    chosen = rerank_tail(candidates, scores, is_tail, strength, k)
    lookup = [
        dict(zip(c.tolist(), s.tolist(), strict=True))
        for c, s in zip(candidates, scores, strict=True)
    ]
    chosen_scores = np.array(
        [[lookup[r].get(int(i), -np.inf) for i in row] for r, row in enumerate(chosen)],
        dtype=np.float32,
    ).reshape(chosen.shape)
    return chosen, chosen_scores


def _rerank_one(
    candidates: np.ndarray, scores: np.ndarray, is_tail: np.ndarray, strength: float, k: int
) -> list[int]:
    """`_rerank_block` for a single row, same arithmetic, same result (tested to agree)."""
    cands = candidates.tolist()
    raw = scores.astype(np.float64).tolist()
    real = [c for c in cands if c >= 0]
    tail_flags = is_tail[real].tolist() if real else []
    tail_cols = [j for j, t in enumerate(tail_flags) if t][:k]
    head_cols = [j for j, t in enumerate(tail_flags) if not t][:k]
    finite = [raw[j] for j in range(len(real)) if math.isfinite(raw[j])]
    lo = min(finite) if finite else 0.0
    hi = max(finite) if finite else 0.0
    span = hi - lo if finite and hi > lo else 1.0

    def rel(value: float) -> float:
        if math.isnan(value) or value == -math.inf:
            return 0.0
        if value == math.inf:
            return 1.0
        return (value - lo) / span

    keep_rel = 1.0 - strength
    out = [PAD] * k
    n_tail = n_head = 0
    for pos in range(k):
        has_tail = n_tail < len(tail_cols)
        has_head = n_head < len(head_cols)
        if not (has_tail or has_head):
            break
        col_t = tail_cols[n_tail] if has_tail else 0
        col_h = head_cols[n_head] if has_head else 0
        bonus = 1.0 - n_tail / (pos + 1.0)
        value_t = keep_rel * rel(raw[col_t]) + strength * bonus if has_tail else -math.inf
        value_h = keep_rel * rel(raw[col_h]) if has_head else -math.inf
        take_tail = has_tail and (value_t > value_h or (value_t == value_h and col_t < col_h))
        if take_tail:
            out[pos] = cands[col_t]
            n_tail += 1
        else:
            out[pos] = cands[col_h]
            n_head += 1
    return out


def _rerank_block(
    candidates: np.ndarray, scores: np.ndarray, is_tail: np.ndarray, strength: float, k: int
) -> np.ndarray:
    n_users = len(candidates)
    real = candidates >= 0
    tail = is_tail[np.where(real, candidates, 0)] & real
    tail_cols, n_tail = _first_k_columns(tail, k)
    head_cols, n_head = _first_k_columns(real & ~tail, k)
    lo, span = _relevance_range(scores, real)

    rows = np.arange(n_users)
    next_tail = np.zeros(n_users, dtype=np.int64)  # how many tail candidates are listed
    next_head = np.zeros(n_users, dtype=np.int64)
    keep_rel = 1.0 - strength
    out = np.full((n_users, k), PAD, dtype=np.int64)
    for pos in range(k):
        has_tail = next_tail < n_tail
        has_head = next_head < n_head
        col_t = tail_cols[rows, np.minimum(next_tail, k - 1)]
        col_h = head_cols[rows, np.minimum(next_head, k - 1)]
        # Every listed item fills one position, so next_tail is also n_tail(S) and |S| = pos.
        bonus = 1.0 - next_tail / (pos + 1.0)
        rel_t = _relevance(scores[rows, col_t], lo, span)
        rel_h = _relevance(scores[rows, col_h], lo, span)
        value_t = np.where(has_tail, keep_rel * rel_t + strength * bonus, -np.inf)
        value_h = np.where(has_head, keep_rel * rel_h, -np.inf)
        take_tail = has_tail & ((value_t > value_h) | ((value_t == value_h) & (col_t < col_h)))
        take_head = has_head & ~take_tail
        col = np.where(take_tail, col_t, col_h)
        out[:, pos] = np.where(take_tail | take_head, candidates[rows, col], PAD)
        next_tail += take_tail
        next_head += take_head
    return out
