import numpy as np
import pytest
import scipy.sparse as sp

from tailor.models.baselines import (
    ALS,
    DEFAULT_GRIDS,
    EASE,
    ItemKNN,
    MostPopular,
    TextCosine,
    grid,
    interaction_matrix,
    make_baseline,
)
from tailor.ranking.topk import top_k


def test_most_popular_ranks_by_popularity_and_skips_seen_items() -> None:
    rec = MostPopular(np.array([3, 9, 1, 9, 5]))
    assert rec.name == "most-popular" and rec.n_items == 5
    histories = [np.array([1]), np.array([], dtype=np.int64)]
    scores = rec.score(histories)
    assert scores.shape == (2, 5) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores[0], scores[1])
    # Ties (items 1 and 3, both 9) go to the lower index.
    np.testing.assert_array_equal(top_k(scores, histories, 3), [[3, 4, 0], [1, 3, 4]])


def test_most_popular_scores_are_writable_copies() -> None:
    rec = MostPopular(np.array([1, 2]))
    scores = rec.score([np.array([0]), np.array([1])])
    scores[0, 0] = 100.0
    assert rec.score([np.array([0])])[0, 0] == 1.0


# Item 2 lies between items 0 and 1 (closer to 0); item 3 is orthogonal to all of them.
VECTORS = np.array(
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32
)


def test_text_cosine_picks_the_nearest_item() -> None:
    rec = TextCosine(VECTORS)
    assert rec.name == "text-cosine" and rec.n_items == 4
    histories = [np.array([0]), np.array([1]), np.array([0, 1]), np.array([3])]
    scores = rec.score(histories)
    assert scores.shape == (4, 4) and scores.dtype == np.float32
    # History [0]: user = item 0, cosines [1, 0, 0.8, 0].
    np.testing.assert_allclose(scores[0], [1.0, 0.0, 0.8, 0.0], atol=1e-6)
    # History [0, 1]: user = (0.5, 0.5, 0) normalised; item 2 scores (0.8 + 0.6) / sqrt(2).
    np.testing.assert_allclose(scores[2, 2], 1.4 / np.sqrt(2), atol=1e-6)
    top = top_k(scores, histories, 1)
    # [1] -> item 2 (cos 0.6) beats 0 (cos 0) and 3 (cos 0); [3] -> all tie at 0 -> item 0.
    np.testing.assert_array_equal(top[:, 0], [2, 2, 2, 0])


def test_text_cosine_empty_history_scores_zero() -> None:
    rec = TextCosine(VECTORS)
    scores = rec.score([np.array([], dtype=np.int64), np.array([3, 3])])
    np.testing.assert_array_equal(scores[0], np.zeros(4, dtype=np.float32))
    np.testing.assert_allclose(scores[1], [0, 0, 0, 1], atol=1e-6)
    assert rec.score([]).shape == (0, 4)


def test_text_cosine_is_a_true_cosine_for_unnormalised_vectors() -> None:
    histories = [np.array([0, 2]), np.array([1])]
    np.testing.assert_allclose(
        TextCosine(VECTORS * 3.0).score(histories), TextCosine(VECTORS).score(histories), atol=1e-6
    )


# ------------------------------------------------------------------ collaborative filtering


def _h(*items: int) -> np.ndarray:
    return np.array(items, dtype=np.int64)


# Items 0 and 1 always come together (three users); item 2 never meets them; 3 meets 2 once.
CO_OCCUR = [_h(0, 1), _h(1, 0), _h(0, 1), _h(2), _h(2, 3)]


def _blocks(rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
    """Users 0-9 only see items 0-5 and users 10-19 only items 6-11; each misses 1-2 of them."""
    histories = []
    for user in range(20):
        block = np.arange(6) if user < 10 else np.arange(6, 12)
        keep = rng.permutation(block)[: rng.integers(4, 6)]
        histories.append(np.sort(keep))
    return histories, 12


def test_interaction_matrix_is_binary_csr() -> None:
    X = interaction_matrix([_h(2, 2, 0), _h(), _h(1)], 4)
    assert sp.isspmatrix_csr(X) and X.dtype == np.float32
    np.testing.assert_array_equal(X.toarray(), [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    with pytest.raises(ValueError, match="outside"):
        interaction_matrix([_h(4)], 4)


def test_item_knn_ranks_the_co_occurring_item_first() -> None:
    rec = ItemKNN(neighbours=10, shrink=0.0).fit(CO_OCCUR, 4)
    assert rec.name == "item-knn" and rec.n_items == 4
    assert sp.issparse(rec.similarity)
    sim = rec.similarity.toarray()
    # Items 0 and 1: 3 shared users, 3 users each -> cosine 1; item 3 vs 2: 1 / sqrt(2 * 1).
    np.testing.assert_allclose(sim[0, 1], 1.0, atol=1e-6)
    np.testing.assert_allclose(sim[2, 3], 1 / np.sqrt(2), atol=1e-6)
    np.testing.assert_array_equal(np.diag(sim), 0.0)
    assert sim[0, 2] == 0.0 and sim[0, 3] == 0.0
    scores = rec.score([_h(0), _h()])
    assert scores.shape == (2, 4) and scores.dtype == np.float32
    assert scores[0, 1] > scores[0, 2]
    np.testing.assert_array_equal(top_k(scores[:1], [_h(0)], 1), [[1]])
    np.testing.assert_array_equal(scores[1], 0.0)


def test_item_knn_keeps_exactly_the_top_neighbours_per_column() -> None:
    rng = np.random.default_rng(3)
    dense = rng.random((40, 12)) < 0.6
    histories = [np.flatnonzero(row) for row in dense]
    full = ItemKNN(neighbours=100, shrink=5.0).fit(histories, 12).similarity.toarray()
    # Dense enough that every item has a positive similarity to all 11 others.
    assert ((full > 0).sum(axis=0) == 11).all()
    pruned = ItemKNN(neighbours=4, shrink=5.0).fit(histories, 12).similarity.toarray()
    np.testing.assert_array_equal((pruned != 0).sum(axis=0), 4)
    for j in range(12):
        kept = pruned[:, j] != 0
        # Kept entries are unchanged and none of the dropped ones is larger.
        np.testing.assert_allclose(pruned[kept, j], full[kept, j], rtol=1e-6)
        dropped = ~kept & (np.arange(12) != j)
        assert full[kept, j].min() >= full[dropped, j].max()


def test_item_knn_shrink_penalises_rare_pairs_more() -> None:
    # Pair (0, 1) meets once, pair (2, 3) ten times; both have cosine exactly 1.
    histories = [_h(0, 1)] + [_h(2, 3)] * 10
    raw = ItemKNN(shrink=0.0).fit(histories, 4).similarity.toarray()
    shrunk = ItemKNN(shrink=10.0).fit(histories, 4).similarity.toarray()
    np.testing.assert_allclose([raw[0, 1], raw[2, 3]], [1.0, 1.0], atol=1e-6)
    # 1 / (1 + 10) against 10 / (10 + 10).
    np.testing.assert_allclose([shrunk[0, 1], shrunk[2, 3]], [1 / 11, 0.5], atol=1e-6)
    assert shrunk[0, 1] / raw[0, 1] < shrunk[2, 3] / raw[2, 3]


def test_ease_matches_the_closed_form_on_a_small_matrix() -> None:
    X = np.array(
        [[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=np.float64
    )
    histories = [np.flatnonzero(row) for row in X]
    rec = EASE(l2=2.0).fit(histories, 4)
    assert rec.name == "ease" and rec.n_items == 4
    P = np.linalg.inv(X.T @ X + 2.0 * np.eye(4))
    expected = -P / np.diag(P)[None, :]
    np.fill_diagonal(expected, 0.0)
    assert rec.B.dtype == np.float32
    np.testing.assert_allclose(rec.B, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.diag(rec.B), 0.0)
    scores = rec.score(histories)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, X @ expected, rtol=1e-5, atol=1e-6)


def test_ease_with_huge_l2_ranks_by_co_occurrence() -> None:
    rng = np.random.default_rng(7)
    dense = rng.random((60, 8)) < 0.4
    histories = [np.flatnonzero(row) for row in dense]
    co = dense.T.astype(np.float64) @ dense
    np.fill_diagonal(co, 0.0)
    rec = EASE(l2=1e7).fit(histories, 8)
    users = [_h(0), _h(3), _h(1, 5)]
    for history, scores in zip(users, rec.score(users), strict=True):
        expected = co[history].sum(axis=0)
        # Every strictly ordered pair of co-occurrence counts keeps its order in the scores.
        higher = expected[:, None] > expected[None, :]
        assert higher.sum() >= 20  # enough distinct counts for the check to mean something
        assert (scores[:, None] > scores[None, :])[higher].all()
        # And the scores are proportional to co-occurrence: s ≈ co / l2.
        np.testing.assert_allclose(scores * 1e7, expected, rtol=1e-3, atol=1e-3)
    assert np.diag(rec.B).max() == 0.0


def test_ease_keeps_disjoint_blocks_apart() -> None:
    histories, n_items = _blocks(np.random.default_rng(0))
    rec = EASE(l2=10.0).fit(histories, n_items)
    scores = rec.score(histories)
    for user, history in enumerate(histories):
        own = np.arange(6) if user < 10 else np.arange(6, 12)
        n_unseen = 6 - len(history)
        top = top_k(scores[user : user + 1], [history], n_unseen)[0]
        assert np.isin(top, own).all()
    # No weight crosses between the blocks at all, so the other block scores exactly 0.
    assert not rec.B[:6, 6:].any() and not rec.B[6:, :6].any()
    assert not scores[:10, 6:].any() and not scores[10:, :6].any()


@pytest.mark.parametrize("cg_steps", [3, None])
def test_als_ranks_own_block_unseen_items_above_the_other_block(cg_steps) -> None:
    histories, n_items = _blocks(np.random.default_rng(1))
    # Two factors, one per block: the structure of the data, so nothing is left to fit noise.
    rec = ALS(factors=2, regularization=0.1, alpha=10.0, iterations=15, cg_steps=cg_steps)
    rec = rec.fit(histories, n_items)
    assert rec.name == "als" and rec.n_items == n_items
    assert rec.user_factors.shape == (20, 2) and rec.item_factors.shape == (n_items, 2)
    for scores in (rec.user_factors @ rec.item_factors.T, rec.score(histories)):
        for user, history in enumerate(histories):
            own = np.arange(6) if user < 10 else np.arange(6, 12)
            other = np.setdiff1d(np.arange(12), own)
            unseen = np.setdiff1d(own, history)
            assert scores[user, unseen].min() > scores[user, other].max()
    # A new user folded in from one block-B item gets block B first.
    top = top_k(rec.score([_h(7)]), [_h(7)], 5)[0]
    assert (top >= 6).all()


def test_als_conjugate_gradient_reaches_the_exact_row_solutions() -> None:
    # CG on an f x f system is exact after f steps (up to rounding); fewer steps from a start
    # already close get closer with every step.
    rng = np.random.default_rng(7)
    dense = rng.random((40, 25)) < 0.25
    dense[:3] = False  # rows without events solve to exactly 0
    X = interaction_matrix([np.flatnonzero(row) for row in dense], 25)
    Y = rng.normal(0.0, 0.3, size=(25, 5))
    rec = ALS(factors=5, regularization=0.1, alpha=8.0)
    exact = rec._solve_rows(X, Y)
    start = rng.normal(0.0, 0.01, size=exact.shape)
    np.testing.assert_allclose(rec._cg_rows(X, Y, start, 5), exact, atol=1e-10)
    errors = [np.abs(rec._cg_rows(X, Y, start, steps) - exact).max() for steps in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2] > 0
    assert not rec._cg_rows(X, Y, start, 1)[:3].any()
    with pytest.raises(ValueError, match="cg_steps"):
        ALS(cg_steps=0)


def test_als_is_deterministic_for_a_seed() -> None:
    histories, n_items = _blocks(np.random.default_rng(2))
    a = ALS(factors=3, iterations=3, seed=5).fit(histories, n_items)
    b = ALS(factors=3, iterations=3, seed=5).fit(histories, n_items)
    c = ALS(factors=3, iterations=3, seed=6).fit(histories, n_items)
    np.testing.assert_array_equal(a.score(histories), b.score(histories))
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    assert not np.allclose(a.item_factors, c.item_factors)


def test_als_fold_in_agrees_with_the_fitted_users() -> None:
    rng = np.random.default_rng(4)
    dense = rng.random((50, 15)) < 0.3
    dense[:, :3] |= rng.random((50, 3)) < 0.5  # a few popular items give clear favourites
    histories = [np.flatnonzero(row) for row in dense]
    rec = ALS(factors=6, regularization=0.1, alpha=5.0, iterations=15).fit(histories, 15)
    folded = rec.score(histories)
    assert folded.shape == (50, 15) and folded.dtype == np.float32
    fitted = rec.user_factors @ rec.item_factors.T
    # Fit ends on a user step against the final item factors, which is what fold-in solves.
    np.testing.assert_allclose(folded, fitted, atol=1e-5)
    np.testing.assert_array_equal(top_k(folded, histories, 1), top_k(fitted, histories, 1))
    # Order of the history and repeats do not matter; an empty one scores 0.
    np.testing.assert_allclose(
        rec.score([histories[0][::-1], np.repeat(histories[0], 2)]),
        folded[[0, 0]],
        atol=1e-6,
    )
    np.testing.assert_array_equal(rec.score([_h()]), 0.0)


@pytest.mark.parametrize(
    "model", [ItemKNN(neighbours=5, shrink=1.0), EASE(l2=1.0), ALS(factors=3, iterations=4)]
)
def test_items_unseen_in_fit_score_zero(model) -> None:
    # Items 2 and 5 are in no history; repeats and unseen items in a scored history are fine.
    histories = [_h(0, 1, 1), _h(1, 3), _h(3, 4, 0), _h(4, 6), _h(0, 6, 3)]
    model.fit(histories, 7)
    assert model.n_items == 7
    scores = model.score([*histories, _h(2, 5, 0), _h()])
    assert scores.shape == (7, 7) and scores.dtype == np.float32
    assert not scores[:, [2, 5]].any()
    assert scores[:, [0, 1, 3, 4, 6]].any()
    # An empty history has nothing to go on.
    assert not scores[-1].any()


@pytest.mark.parametrize("cls", [ItemKNN, EASE, ALS])
def test_repeats_count_once_and_scoring_needs_a_fit(cls) -> None:
    once = cls().fit([_h(0, 1), _h(1, 2), _h(0, 2, 3)], 4)
    twice = cls().fit([_h(0, 1, 0, 1), _h(1, 2, 2), _h(3, 0, 2, 3)], 4)
    probe = [_h(0), _h(1, 1, 3)]
    np.testing.assert_allclose(once.score(probe), twice.score(probe), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="fit"):
        cls().score(probe)
    with pytest.raises(ValueError, match="outside"):
        once.score([_h(4)])


def test_grid_is_the_cartesian_product() -> None:
    combos = grid(a=[1, 2, 3], b=["x", "y"])
    assert len(combos) == 6
    assert combos[0] == {"a": 1, "b": "x"} and combos[-1] == {"a": 3, "b": "y"}
    assert len({tuple(c.items()) for c in combos}) == 6
    assert grid() == [{}]
    assert grid(a=[1], b=[]) == []
    with pytest.raises(TypeError):
        grid(a="abc")


def test_default_grids_build_valid_models() -> None:
    assert {name: len(g) for name, g in DEFAULT_GRIDS.items()} == {
        "item-knn": 6,
        "ease": 5,
        "als": 8,
    }
    assert all(params["iterations"] == 15 for params in DEFAULT_GRIDS["als"])
    assert all(params["cg_steps"] == 3 for params in DEFAULT_GRIDS["als"])
    for name, combos in DEFAULT_GRIDS.items():
        for params in combos:
            model = make_baseline(name, **params)
            assert model.name == name
            assert all(getattr(model, key) == value for key, value in params.items())


def test_make_baseline() -> None:
    model = make_baseline("ease", l2=10)
    assert isinstance(model, EASE) and model.l2 == 10
    assert isinstance(make_baseline("item-knn"), ItemKNN)
    assert make_baseline("als", factors=8, seed=3).factors == 8
    with pytest.raises(ValueError, match=r"'bpr'.*als, ease, item-knn"):
        make_baseline("bpr")
    with pytest.raises(TypeError):
        make_baseline("ease", neighbours=3)
