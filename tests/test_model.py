"""The fine-tuned sequential model on tiny data with a known structure."""

from __future__ import annotations

import numpy as np
import pytest

from tailor.baselines import MostPopular
from tailor.evaluate import evaluate_recommender, item_popularity
from tailor.model import SeqRecommender, left_pad, make_training_windows
from tailor.settings import TrainSettings


def test_left_pad_keeps_the_newest_events():
    out = left_pad([np.array([1, 2, 3, 4]), np.array([7]), np.array([], dtype=np.int64)], 3)
    assert out.tolist() == [[2, 3, 4], [-1, -1, 7], [-1, -1, -1]]


def test_windows_cover_every_target_once():
    windows = make_training_windows([np.arange(7)], max_len=3)
    assert windows.tolist() == [[3, 4, 5, 6], [0, 1, 2, 3]]
    targets = sorted(int(t) for w in windows for t in w[1:] if t >= 0)
    assert targets == [1, 2, 3, 4, 5, 6]
    assert make_training_windows([np.array([5])], max_len=3).shape == (0, 4)


def cyclic_task(rng, n_items=30, n_users=80, length=15):
    """Each user walks a fixed cycle (i -> i+1); popularity alone is useless here."""
    starts = rng.integers(0, n_items, n_users)
    histories = [(s + np.arange(length)) % n_items for s in starts]
    text = rng.normal(size=(n_items, 16)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return histories, text


def test_model_learns_what_popularity_cannot(rng):
    histories, text = cyclic_task(rng)
    train = [h[:-1] for h in histories]
    targets = np.array([h[-1] for h in histories])
    settings = TrainSettings(
        epochs=30, dim=32, layers=1, max_len=8, dropout=0.0, learning_rate=5e-3
    )
    model = SeqRecommender(text, settings)
    report = model.fit(train, seed=0)
    assert report.losses[-1] < report.losses[0] * 0.5
    popularity = item_popularity(np.concatenate(train), len(text))
    args = (train, targets, train, popularity, 0.2, [10], len(train))
    ours = evaluate_recommender(model, *args).metrics["ndcg_at_10"]
    popular = evaluate_recommender(MostPopular(popularity), *args).metrics["ndcg_at_10"]
    assert ours > 0.8 and ours > popular + 0.5


def test_same_seed_same_scores(rng):
    # Big enough that multithreaded scatter-adds would reorder sums without deterministic kernels.
    histories, text = cyclic_task(rng, n_items=300, n_users=400, length=40)
    settings = TrainSettings(epochs=2, dim=32, layers=1, max_len=20)
    a, b = SeqRecommender(text, settings, seed=3), SeqRecommender(text, settings, seed=3)
    a.fit(histories, seed=3)
    b.fit(histories, seed=3)
    np.testing.assert_array_equal(a.score(histories[:5]), b.score(histories[:5]))


def test_best_validation_epoch_is_kept(rng):
    histories, text = cyclic_task(rng, n_users=20)
    scores = iter([0.1, 0.9, 0.2])
    model = SeqRecommender(text, TrainSettings(epochs=3, dim=16, layers=1, max_len=6))
    report = model.fit(histories, seed=0, valid_fn=lambda m: next(scores))
    assert report.best_epoch == 2 and report.valid_scores == [0.1, 0.9, 0.2]


def test_save_load_round_trip(tmp_path, rng):
    histories, text = cyclic_task(rng, n_users=10)
    model = SeqRecommender(text, TrainSettings(epochs=1, dim=16, layers=1, max_len=6))
    model.fit(histories, seed=0)
    model.save(tmp_path)
    again = SeqRecommender.load(tmp_path, text)
    np.testing.assert_allclose(model.score(histories[:3]), again.score(histories[:3]), atol=1e-6)


def test_empty_history_scores_zero_and_bad_shape_is_refused(rng):
    _, text = cyclic_task(rng)
    model = SeqRecommender(text, TrainSettings(dim=16, heads=2, layers=1))
    assert not model.score([np.array([], dtype=np.int64)]).any()
    with pytest.raises(ValueError, match="divisible"):
        SeqRecommender(text, TrainSettings(dim=18, heads=4))


def test_items_without_training_events_stay_out_of_training(rng):
    histories, text = cyclic_task(rng, n_items=30)
    histories = [h[h != 7] for h in histories]  # item 7 is "new": never in training
    settings = TrainSettings(epochs=2, dim=16, layers=1, max_len=6, cold_id_neighbours=0)
    model = SeqRecommender(text, settings)
    model.fit(histories, seed=0)
    ids = model.net.item_id.weight.detach().numpy()
    assert not ids[7].any() and ids[8].any()


def test_new_items_borrow_their_text_neighbours_id(rng):
    histories, text = cyclic_task(rng, n_items=30)
    text[7] = text[3]  # item 7 reads exactly like item 3
    histories = [h[h != 7] for h in histories]
    model = SeqRecommender(text, TrainSettings(epochs=2, dim=16, layers=1, cold_id_neighbours=1))
    model.fit(histories, seed=0)
    ids = model.net.item_id.weight.detach().numpy()
    np.testing.assert_allclose(ids[7], ids[3])


def test_early_stopping_patience(rng):
    histories, text = cyclic_task(rng, n_users=20)
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    model = SeqRecommender(text, TrainSettings(epochs=6, dim=16, layers=1, patience=2))
    report = model.fit(histories, seed=0, valid_fn=lambda m: next(scores))
    assert len(report.losses) == 3 and report.best_epoch == 1
