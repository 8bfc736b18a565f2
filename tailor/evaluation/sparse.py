"""Thinner training data on the same exam: where the text has to carry items.

The protocol's cases stay as they are (every validation and test event, the cold items); only
the training events shrink, as in a young catalogue or a niche shop:

- user-sparse (`thin_histories`): each user keeps a seeded random share of their training
  events, in time order, and at least `min_events` of them (all of them when they have
  fewer);
- item-sparse (`cap_item_events`): each item keeps at most `cap` of its training events, a
  seeded random draw over the users who had them.

A test or validation case's history is the user's (thinned) training events followed by their
validation events, so what a model reads at test time is what it could have seen in that
sparser world. Items left with no training event become new items to every model.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tailor.data.protocol import Histories


def thin_histories(hist: Histories, share: float, min_events: int, seed: int) -> Histories:
    """Each user's training events thinned to `share` (at least `min_events`, order kept)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if min_events < 0:
        raise ValueError(f"min_events must be >= 0, got {min_events}")
    if share == 1:
        return hist
    rng = np.random.default_rng(seed)
    train, liked = [], []
    for events, mask in zip(hist.train, hist.train_liked, strict=True):
        n = len(events)
        keep_n = min(n, max(min_events, round(share * n)))
        keep = np.sort(rng.choice(n, size=keep_n, replace=False)) if keep_n < n else np.arange(n)
        train.append(events[keep])
        liked.append(mask[keep])
    return replace(hist, train=train, train_liked=liked)


def cap_item_events(hist: Histories, cap: int, seed: int) -> Histories:
    """Every item's training events capped at `cap`, a seeded draw over its events."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    lengths = np.array([len(h) for h in hist.train], dtype=np.int64)
    items = np.concatenate(hist.train) if len(hist.train) else np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    # A random order, then a stable sort by item: each item's events in a random order, of
    # which the first `cap` are kept.
    shuffled = rng.permutation(len(items))
    order = shuffled[np.argsort(items[shuffled], kind="stable")]
    sorted_items = items[order]
    starts = np.searchsorted(sorted_items, sorted_items, side="left")
    rank = np.arange(len(items)) - starts
    kept = np.zeros(len(items), dtype=bool)
    kept[order[rank < cap]] = True
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    train, liked = [], []
    for user, (events, mask) in enumerate(zip(hist.train, hist.train_liked, strict=True)):
        keep = kept[bounds[user] : bounds[user + 1]]
        train.append(events[keep])
        liked.append(mask[keep])
    return replace(hist, train=train, train_liked=liked)


def training_events(hist: Histories) -> int:
    return int(sum(len(h) for h in hist.train))
