"""Head and tail: which items are popular, counted from training events."""

from __future__ import annotations

import math

import numpy as np


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
