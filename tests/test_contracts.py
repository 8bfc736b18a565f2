"""Contracts every recommender keeps, whatever it is: each baseline, the sequential model and
the ensemble. Evaluation and serving rely on exactly these."""

from __future__ import annotations

import numpy as np
import pytest

from tailor.models.baselines import fit_baseline
from tailor.models.index import build_index
from tailor.models.sequential import EnsembleRecommender, SeqRecommender
from tailor.ranking.rank import RankPolicy, rank_dense, rank_histories, rerank_pool
from tailor.settings import TrainSettings

N_ITEMS = 40


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(N_ITEMS, 12)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    histories = [rng.choice(N_ITEMS - 2, size=rng.integers(3, 9), replace=False) for _ in range(50)]
    return text, histories


def _sequential(vectors, histories, seed=0, **changes):
    settings = TrainSettings(
        epochs=2, dim=8, heads=2, layers=1, max_len=6, text_view_weight=0.3
    ).model_copy(update=changes)
    model = SeqRecommender(vectors, settings, seed=seed)
    model.fit(histories, seed=seed)
    return model


def _make(name: str):
    text, histories = _data()
    if name == "tailor-seq":
        return _sequential(text, histories)
    if name == "sasrec":
        return _sequential(text, histories, text=False, text_view_weight=0.0)
    if name == "gru4rec":
        return _sequential(text, histories, text=False, text_view_weight=0.0, sequence="gru")
    if name == "ensemble":
        return EnsembleRecommender(
            [_sequential(text, histories, 0), _sequential(text, histories, 1)]
        )
    params = {"als": {"factors": 4, "iterations": 3}, "item-knn": {"neighbours": 10}}.get(name, {})
    return fit_baseline(name, params, histories, N_ITEMS, text)


MODELS = [
    "most-popular",
    "text-cosine",
    "item-knn",
    "ease",
    "als",
    "sasrec",
    "gru4rec",
    "tailor-seq",
    "ensemble",
]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return _make(request.param)


def _queries():
    _, histories = _data(seed=1)
    return [*histories[:7], np.array([], dtype=np.int64), np.array([N_ITEMS - 1])]


def test_scores_every_item_for_every_user_without_nan(model):
    queries = _queries()
    scores = model.score(queries)
    assert scores.shape == (len(queries), N_ITEMS)
    assert np.issubdtype(scores.dtype, np.floating)
    assert not np.isnan(scores).any() and not np.isposinf(scores).any()
    # -inf only where an id model cannot score an item it never trained on (the last two).
    trained = np.isfinite(scores[:, : N_ITEMS - 2])
    assert trained.all()


def test_scores_are_deterministic_and_batch_independent(model):
    queries = _queries()
    together = model.score(queries)
    np.testing.assert_array_equal(model.score(queries), together)
    alone = np.concatenate([model.score([q]) for q in queries])
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-5)


def test_lists_never_repeat_or_return_history_and_follow_the_scores(model):
    queries = _queries()[:7]
    ranked = rank_dense(model, queries, RankPolicy(10))
    scores = model.score(queries)
    for row, history in enumerate(queries):
        items = ranked.items[row][ranked.items[row] >= 0]
        assert len(items) == 10 and len(set(items.tolist())) == 10
        assert not set(items.tolist()) & set(history.tolist())
        assert (np.diff(scores[row, items]) <= 1e-6).all()  # best first


@pytest.mark.parametrize("name", ["tailor-seq", "ensemble"])
def test_vector_models_rank_the_same_through_their_index(name):
    # Models with user and item vectors are served through an index: it must give the lists
    # their dense scores give.
    model = _make(name)
    queries = _queries()[:7]
    index = build_index(model.item_vectors())
    via_index = rank_histories(model, index, queries, RankPolicy(10))
    dense = rank_dense(model, queries, RankPolicy(10))
    assert (via_index.items == dense.items).mean() > 0.95  # float ties may swap neighbours
    np.testing.assert_allclose(
        model.user_vectors(queries) @ model.item_vectors().T, model.score(queries), rtol=1e-4
    )


def test_a_searched_pool_reranks_to_the_lists_ranking_again_gives():
    # The evaluation's re-ranking sweep searches once and re-ranks the pool per strength.
    model = _make("tailor-seq")
    # Users with a history: an empty one scores every item 0, and the order of exact ties
    # depends on how many results the index is asked for.
    queries = [q for q in _queries() if len(q)]
    index = build_index(model.item_vectors())
    is_tail = np.arange(N_ITEMS) % 3 == 0
    pool = rank_histories(model, index, queries, RankPolicy(30))
    for strength in (0.0, 0.3, 1.0):
        policy = RankPolicy(5, strength, 30, is_tail)
        again = rank_histories(model, index, queries, policy)
        reranked = rerank_pool(pool, policy)
        np.testing.assert_array_equal(reranked.items, again.items)
        np.testing.assert_array_equal(reranked.scores, again.scores)
    with pytest.raises(ValueError, match="the pool has 30 candidates, the policy needs 40"):
        rerank_pool(pool, RankPolicy(5, 0.5, 40, is_tail))
