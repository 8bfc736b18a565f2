"""Thinning the training events: the protocol's cases untouched, the draws seeded."""

from __future__ import annotations

import numpy as np
import pytest

from tailor.data.protocol import Histories
from tailor.evaluation.sparse import cap_item_events, thin_histories, training_events


def _hist() -> Histories:
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 6, size=n).astype(np.int64) for n in (10, 2, 7, 20, 0)]
    liked = [h % 2 == 0 for h in train]  # a flag that can be checked after the draw
    return Histories(
        users=["a", "b", "c", "d", "e"],
        train=train,
        train_liked=liked,
        valid_users=np.array([0, 2]),
        valid_targets=np.array([1, 2]),
        test_users=np.array([0, 2, 3]),
        test_targets=np.array([3, 4, 5]),
        n_items=6,
        valid_events={0: (np.array([1]), np.array([True])), 2: (np.array([2]), np.array([True]))},
    )


def _is_subsequence(part: np.ndarray, whole: np.ndarray) -> bool:
    it = iter(whole.tolist())
    return all(any(x == y for y in it) for x in part.tolist())


def test_thinning_keeps_a_share_per_user_with_a_floor_and_the_order():
    hist = _hist()
    thin = thin_histories(hist, 0.2, min_events=3, seed=1)
    # round(0.2 n), at least 3, never more than the user had
    assert [len(h) for h in thin.train] == [3, 2, 3, 4, 0]
    for kept, whole, kept_liked in zip(thin.train, hist.train, thin.train_liked, strict=True):
        assert _is_subsequence(kept, whole)
        assert np.array_equal(kept_liked, kept % 2 == 0)
    # validation and test cases are the protocol's, untouched
    assert np.array_equal(thin.test_targets, hist.test_targets)
    assert thin.valid_events.keys() == hist.valid_events.keys()
    # the test history is the thinned train events followed by the validation events
    assert np.array_equal(thin.test_history()[0], np.concatenate([thin.train[0], [1]]))
    assert training_events(thin) == 12 and training_events(hist) == 39


def test_thinning_is_seeded_and_a_share_of_one_changes_nothing():
    hist = _hist()
    a = thin_histories(hist, 0.5, 1, seed=3)
    b = thin_histories(hist, 0.5, 1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.train, b.train, strict=True))
    assert thin_histories(hist, 1.0, 3, seed=3) is hist
    with pytest.raises(ValueError, match="share"):
        thin_histories(hist, 0.0, 3, seed=3)


def test_capping_items_keeps_at_most_the_cap_of_each_item():
    hist = _hist()
    capped = cap_item_events(hist, 2, seed=0)
    before = np.bincount(np.concatenate(hist.train), minlength=6)
    after = np.bincount(np.concatenate(capped.train), minlength=6)
    assert np.array_equal(after, np.minimum(before, 2))
    for kept, whole, liked in zip(capped.train, hist.train, capped.train_liked, strict=True):
        assert _is_subsequence(kept, whole)
        assert np.array_equal(liked, kept % 2 == 0)  # the flags travel with their events
    assert np.array_equal(capped.test_targets, hist.test_targets)
    with pytest.raises(ValueError, match="cap"):
        cap_item_events(hist, 0, seed=0)
