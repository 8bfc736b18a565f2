"""Top-k selection over a dense score matrix, deterministic in ties."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD = -1  # fills a top-k row when fewer than k items are left to recommend
_TOP_K_CHUNK_ELEMENTS = 1 << 24


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
