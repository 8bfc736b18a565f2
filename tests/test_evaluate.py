import math

import numpy as np
import pytest

from tailor.evaluation.metrics import exposure, paired_bootstrap, per_user_metric, ranking_metrics
from tailor.models.baselines import TextCosine
from tailor.models.index import build_index
from tailor.ranking import topk
from tailor.ranking.rank import RankPolicy, rank_dense, rank_index, rank_scores
from tailor.ranking.tail import head_mask, item_popularity
from tailor.ranking.topk import top_k


def _no_exclude(n: int) -> list[np.ndarray]:
    return [np.empty(0, dtype=np.int64) for _ in range(n)]


# --- top_k ---------------------------------------------------------------------------------


def test_top_k_orders_best_first_and_skips_excluded() -> None:
    scores = np.array([[0.1, 0.5, 0.3, 0.9], [0.4, 0.2, 0.8, 0.1]], dtype=np.float32)
    top = top_k(scores, [np.array([3]), np.array([], dtype=np.int64)], k=2)
    assert top.dtype == np.int64
    np.testing.assert_array_equal(top, [[1, 2], [2, 0]])


def test_top_k_breaks_exact_ties_by_lower_index() -> None:
    scores = np.array([[1.0, 2.0, 2.0, 2.0, 0.0]])
    np.testing.assert_array_equal(top_k(scores, _no_exclude(1), 2), [[1, 2]])
    np.testing.assert_array_equal(top_k(scores, [np.array([1])], 2), [[2, 3]])
    # A wide tie makes argpartition's pick at the cut arbitrary; the index rule must still hold.
    flat = np.zeros((1, 200), dtype=np.float32)
    np.testing.assert_array_equal(top_k(flat, [np.array([0, 2])], 3), [[1, 3, 4]])


def test_top_k_pads_when_too_few_items_remain() -> None:
    scores = np.array([[0.3, 0.1, 0.2, 0.4]])
    np.testing.assert_array_equal(top_k(scores, [np.array([0, 3, 2])], 3), [[1, -1, -1]])
    np.testing.assert_array_equal(top_k(scores, _no_exclude(1), 6), [[3, 0, 2, 1, -1, -1]])


def test_top_k_keeps_real_minus_inf_scores_but_not_excluded_items() -> None:
    scores = np.array([[-np.inf, np.nan, 1.0, -np.inf]])
    # Item 0 is excluded; 3 (-inf) and 1 (NaN ranks as -inf) are still eligible, lower index first.
    np.testing.assert_array_equal(top_k(scores, [np.array([0])], 4), [[2, 1, 3, -1]])


def test_top_k_leaves_scores_untouched() -> None:
    scores = np.array([[0.3, 0.1, 0.2]], dtype=np.float32)
    before = scores.copy()
    top_k(scores, [np.array([0])], 2)
    np.testing.assert_array_equal(scores, before)


def test_top_k_matches_a_stable_full_sort() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(40, 30)).astype(np.float32)  # many ties on purpose
    exclude = [rng.choice(30, size=rng.integers(0, 29), replace=False) for _ in range(40)]
    top = top_k(scores, exclude, 5)
    for u in range(40):
        keep = np.setdiff1d(np.arange(30), exclude[u])
        expected = keep[np.argsort(-scores[u, keep], kind="stable")][:5]
        expected = np.concatenate([expected, np.full(5 - len(expected), -1)])
        np.testing.assert_array_equal(top[u], expected)


def test_top_k_chunks_of_rows_give_the_same_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 3, size=(9, 12)).astype(np.float32)
    exclude = [rng.choice(12, size=3, replace=False) for _ in range(9)]
    whole = top_k(scores, exclude, 4)
    monkeypatch.setattr(topk, "_TOP_K_CHUNK_ELEMENTS", 20)  # one row per chunk
    np.testing.assert_array_equal(top_k(scores, exclude, 4), whole)


def test_top_k_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        top_k(np.zeros((1, 3)), _no_exclude(1), 0)
    with pytest.raises(ValueError):
        top_k(np.zeros((1, 3)), [np.array([3])], 1)
    with pytest.raises(ValueError):
        top_k(np.zeros((2, 3)), _no_exclude(1), 1)


# --- popularity and head -------------------------------------------------------------------


def test_item_popularity_counts_events() -> None:
    pop = item_popularity(np.array([0, 2, 2, 4]), 5)
    assert pop.dtype == np.int64
    np.testing.assert_array_equal(pop, [1, 0, 2, 0, 1])
    with pytest.raises(ValueError):
        item_popularity(np.array([5]), 5)


def test_head_mask_takes_most_popular_share_of_catalogue() -> None:
    pop = np.array([5, 7, 7, 0, 1])
    # 0.4 * 5 = 2 items: the two 7s.
    np.testing.assert_array_equal(head_mask(pop, 0.4), [False, True, True, False, False])
    # ceil(0.5 * 5) = 3: the two 7s, then the 5.
    np.testing.assert_array_equal(head_mask(pop, 0.5), [True, True, True, False, False])
    # ceil(0.5 * 4) = 2 but one item has events: the tie at zero goes to the lower index.
    np.testing.assert_array_equal(head_mask(np.array([0, 0, 3, 0]), 0.5), [1, 0, 1, 0])
    # 0.1 * 30 is 3.0000000000000004 in floating point; the head is still 3 items.
    assert head_mask(np.arange(30), 0.1).sum() == 3


# --- ranking metrics -----------------------------------------------------------------------

# Five items; popularity [8, 4, 2, 1, 0] with 16 train users gives p = [1/2, 1/4, 1/8, 1/16,
# 1/16] (pop 0 clipped to 1), so self-information -log2 p = [1, 2, 3, 4, 4].
# head_share 0.2 -> ceil(1) = 1 head item: {0}; tail = {1, 2, 3, 4}.
POP = np.array([8, 4, 2, 1, 0])
N_TRAIN_USERS = 16
TOP = np.array(
    [
        [0, 1, 2],  # target 1: hit at rank 1
        [2, 3, 0],  # target 2: hit at rank 0
        [0, 4, -1],  # target 3: miss (list padded)
        [1, 0, 3],  # target 0 (a head item): hit at rank 1
    ]
)
TARGETS = np.array([1, 2, 3, 0])


def test_ranking_metrics_by_hand() -> None:
    m = ranking_metrics(TOP, TARGETS, POP, 0.2, [1, 3], N_TRAIN_USERS)
    assert m["n_users"] == 4
    # k = 1: lists [0], [2], [0], [1]; only user 1 hits, at rank 0.
    assert m["recall_at_1"] == pytest.approx(1 / 4)
    assert m["ndcg_at_1"] == pytest.approx(1 / 4)
    assert m["mrr_at_1"] == pytest.approx(1 / 4)
    assert m["coverage_at_1"] == pytest.approx(3 / 5)  # {0, 1, 2}
    assert m["tail_recall_at_1"] == pytest.approx(1 / 3)  # tail targets: users 0, 1, 2
    assert m["aplt_at_1"] == pytest.approx((0 + 1 + 0 + 1) / 4)
    assert m["novelty_at_1"] == pytest.approx((1 + 3 + 1 + 2) / 4)
    # k = 3: hits at ranks 1, 0, -, 1.
    assert m["recall_at_3"] == pytest.approx(3 / 4)
    assert m["ndcg_at_3"] == pytest.approx((1 / math.log2(3) + 1 + 0 + 1 / math.log2(3)) / 4)
    assert m["mrr_at_3"] == pytest.approx((1 / 2 + 1 + 0 + 1 / 2) / 4)
    assert m["coverage_at_3"] == pytest.approx(1.0)  # all five items listed
    assert m["tail_recall_at_3"] == pytest.approx(2 / 3)
    # Tail shares: 2/3, 2/3, 1/2 (the pad is not part of the list), 2/3.
    assert m["aplt_at_3"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2 + 2 / 3) / 4)
    # Self-information of the 11 listed items: (1+2+3) + (3+4+1) + (1+4) + (2+1+4) = 26.
    assert m["novelty_at_3"] == pytest.approx(26 / 11)


def test_tail_recall_is_nan_without_tail_targets() -> None:
    m = ranking_metrics(TOP, np.array([0, 0, 0, 0]), POP, 0.2, [3], N_TRAIN_USERS)
    assert math.isnan(m["tail_recall_at_3"])
    assert m["recall_at_3"] == pytest.approx(1.0)


def test_padding_never_counts_as_a_hit() -> None:
    top = np.array([[-1, -1]])
    m = ranking_metrics(top, np.array([-1]), POP, 0.2, [2], N_TRAIN_USERS)
    assert m["recall_at_2"] == 0.0
    assert m["coverage_at_2"] == 0.0
    assert math.isnan(m["aplt_at_2"]) and math.isnan(m["novelty_at_2"])


def test_per_user_metric_matches_hand_values_and_means() -> None:
    np.testing.assert_allclose(per_user_metric(TOP, TARGETS, "recall", 3), [1, 1, 0, 1])
    np.testing.assert_allclose(
        per_user_metric(TOP, TARGETS, "ndcg", 3), [1 / math.log2(3), 1, 0, 1 / math.log2(3)]
    )
    np.testing.assert_allclose(per_user_metric(TOP, TARGETS, "mrr", 3), [0.5, 1, 0, 0.5])
    m = ranking_metrics(TOP, TARGETS, POP, 0.2, [3], N_TRAIN_USERS)
    for metric in ("recall", "ndcg", "mrr"):
        assert per_user_metric(TOP, TARGETS, metric, 3).mean() == pytest.approx(m[f"{metric}_at_3"])
    with pytest.raises(ValueError):
        per_user_metric(TOP, TARGETS, "map", 3)  # type: ignore[arg-type]


# --- paired bootstrap ----------------------------------------------------------------------


def test_paired_bootstrap_finds_a_real_gain() -> None:
    rng = np.random.default_rng(0)
    b = rng.normal(0.0, 1.0, size=400)
    a = b + 0.3 + rng.normal(0.0, 0.5, size=400)  # true mean difference 0.3
    mean, low, high = paired_bootstrap(a, b, n_resamples=2000, seed=1)
    assert mean == pytest.approx((a - b).mean())
    assert low < 0.3 < high
    assert low > 0
    assert paired_bootstrap(a, b, n_resamples=2000, seed=1) == (mean, low, high)


def test_paired_bootstrap_interval_covers_zero_without_a_gain() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2, size=300).astype(float)
    b = rng.permutation(a)  # same distribution, no true difference
    mean, low, high = paired_bootstrap(a, b, n_resamples=1000)
    assert low <= mean <= high
    assert low < 0 < high


def test_paired_bootstrap_rejects_unpaired_input() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(0), np.zeros(0))


# --- the ranking path -----------------------------------------------------------------------


class _BatchSpy:
    """Wraps a recommender and records how many users each score call got."""

    def __init__(self, inner: TextCosine) -> None:
        self.inner = inner
        self.name = inner.name
        self.n_items = inner.n_items
        self.batches: list[int] = []

    def score(self, histories):
        self.batches.append(len(histories))
        return self.inner.score(histories)


def _toy_data(n_users: int = 23, n_items: int = 40, seed: int = 5):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n_items, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    histories = [
        rng.choice(n_items, size=rng.integers(0, 6), replace=False) for _ in range(n_users)
    ]
    targets = rng.integers(0, n_items, size=n_users)
    popularity = item_popularity(np.concatenate(histories), n_items)
    return vectors, histories, targets, popularity


def test_dense_ranking_is_top_k_with_history_excluded() -> None:
    vectors, histories, _, _ = _toy_data()
    rec = TextCosine(vectors)
    ranked = rank_dense(rec, histories, RankPolicy(10))
    np.testing.assert_array_equal(ranked.items, top_k(rec.score(histories), histories, 10))
    scores = rec.score(histories)
    real = ranked.items >= 0
    np.testing.assert_allclose(
        ranked.scores[real], np.take_along_axis(scores, ranked.items.clip(min=0), 1)[real]
    )


def test_dense_ranking_batching_changes_nothing() -> None:
    vectors, histories, _, _ = _toy_data()
    one = _BatchSpy(TextCosine(vectors))
    small = rank_dense(one, histories, RankPolicy(7), batch_users=1)
    big = rank_dense(TextCosine(vectors), histories, RankPolicy(7), batch_users=10_000)
    assert one.batches == [1] * 23
    np.testing.assert_array_equal(small.items, big.items)
    assert small.items.shape == (23, 7)


def test_index_and_dense_ranking_agree_with_and_without_the_tail_knob() -> None:
    # The served model is ranked through its index, the baselines from dense scores: both
    # sources must give the same lists for the same scores, re-ranked or not.
    rng = np.random.default_rng(3)
    items = rng.normal(size=(60, 6)).astype(np.float32)
    users = rng.normal(size=(9, 6)).astype(np.float32)
    seen = [set(rng.choice(60, size=4, replace=False).tolist()) for _ in range(9)]
    is_tail = rng.random(60) < 0.6
    index = build_index(items)
    for strength in (0.0, 0.3, 1.0):
        policy = RankPolicy(8, strength, candidates=30, is_tail=is_tail)
        via_index = rank_index(index, users, seen, policy)
        dense = rank_scores(users @ items.T, seen, policy)
        np.testing.assert_array_equal(via_index.items, dense.items)
        np.testing.assert_allclose(via_index.scores, dense.scores, rtol=1e-5)
        assert not any(set(row) & s for row, s in zip(via_index.items.tolist(), seen, strict=True))


def test_policy_needs_tail_flags_to_re_rank() -> None:
    with pytest.raises(ValueError, match="is_tail"):
        RankPolicy(5, strength=0.2)
    with pytest.raises(ValueError, match="positive"):
        RankPolicy(0)


# --- exposure -------------------------------------------------------------------------------


def test_exposure_counts_list_appearances() -> None:
    top = np.array([[0, 1, -1], [1, 2, 3]])
    np.testing.assert_array_equal(exposure(top, 5), [1, 2, 1, 1, 0])
