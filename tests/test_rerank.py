import itertools
import subprocess
import sys

import numpy as np
import pytest

from tailor.ranking.rank import RankPolicy, rank_scores
from tailor.ranking.rerank import rerank_tail
from tailor.ranking.topk import top_k


def rerank_scores(score_matrix, exclude, is_tail, strength, k, n_candidates=200):
    """The dense ranking path with re-ranking, as lists of positions."""
    policy = RankPolicy(k, strength, n_candidates, is_tail)
    return rank_scores(score_matrix, exclude, policy).items


STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _greedy_reference(
    candidates: np.ndarray, scores: np.ndarray, is_tail: np.ndarray, strength: float, k: int
) -> np.ndarray:
    """The objective of the module docs, evaluated over every remaining candidate, user by user."""
    out = np.full((len(candidates), k), -1, dtype=np.int64)
    for u, (cand, score) in enumerate(zip(candidates, scores, strict=True)):
        real = cand >= 0
        cand, score = cand[real], score[real].astype(np.float64)
        if not len(cand):
            continue
        lo, hi = score.min(), score.max()
        rel = (score - lo) / (hi - lo) if hi > lo else np.zeros_like(score)
        left = np.ones(len(cand), dtype=bool)
        n_tail = 0
        for pos in range(min(k, len(cand))):
            bonus = 1.0 - n_tail / (pos + 1.0)
            value = (1.0 - strength) * rel + strength * np.where(is_tail[cand], bonus, 0.0)
            value[~left] = -np.inf
            best = int(np.argmax(value))  # ties: the first, i.e. the model's higher rank
            left[best] = False
            out[u, pos] = cand[best]
            n_tail += bool(is_tail[cand[best]])
    return out


def _random_case(
    seed: int,
    n_users: int = 200,
    n_items: int = 400,
    n_cand: int = 50,
    tail_share: float = 0.3,
    round_to: int | None = None,
    pad: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_tail = rng.random(n_items) < tail_share
    candidates = np.stack([rng.choice(n_items, n_cand, replace=False) for _ in range(n_users)])
    scores = -np.sort(-rng.normal(size=(n_users, n_cand)), axis=1)
    if round_to is not None:  # coarse scores: many exact ties in relevance and in the objective
        scores = np.round(scores, round_to)
    if pad:
        lengths = rng.integers(0, n_cand + 1, size=n_users)
        empty = np.arange(n_cand)[None, :] >= lengths[:, None]
        candidates[empty] = -1
        scores[empty] = -np.inf
    return candidates.astype(np.int64), scores, is_tail


def _tail_count(lists: np.ndarray, is_tail: np.ndarray) -> np.ndarray:
    listed = lists >= 0
    tail = np.zeros(lists.shape, dtype=bool)
    tail[listed] = is_tail[lists[listed]]
    return tail.sum(axis=1)


# --- the knob's end points ------------------------------------------------------------------


def test_strength_zero_returns_the_first_k_candidates_exactly() -> None:
    candidates, scores, is_tail = _random_case(0, pad=True)
    out = rerank_tail(candidates, scores, is_tail, 0.0, 20)
    assert out.dtype == np.int64 and out.shape == (200, 20)
    np.testing.assert_array_equal(out, candidates[:, :20])


def test_a_tiny_strength_keeps_the_model_order() -> None:
    # The greedy itself (not only the strength-0 shortcut) follows the model's order.
    candidates, scores, is_tail = _random_case(1)
    out = rerank_tail(candidates, scores, is_tail, 1e-12, 10)
    np.testing.assert_array_equal(out, candidates[:, :10])


def test_strength_one_puts_tail_candidates_first_in_model_order() -> None:
    candidates, scores, is_tail = _random_case(2, n_cand=30, pad=True)
    k = 12
    out = rerank_tail(candidates, scores, is_tail, 1.0, k)
    for u in range(len(candidates)):
        cand = candidates[u][candidates[u] >= 0]
        tail_first = [*cand[is_tail[cand]], *cand[~is_tail[cand]]][:k]
        expected = np.full(k, -1)
        expected[: len(tail_first)] = tail_first
        np.testing.assert_array_equal(out[u], expected)
    # Which puts min(k, tail candidates) tail items at the top of every list.
    n_tail_cand = _tail_count(candidates, is_tail)
    n_first = np.minimum(k, n_tail_cand)
    in_tail = np.zeros(out.shape, dtype=bool)
    in_tail[out >= 0] = is_tail[out[out >= 0]]
    assert n_tail_cand.max() > k and n_first.min() < k  # both cases occur
    assert all(in_tail[u, : n_first[u]].all() for u in range(len(out)))


# --- lists are well formed ------------------------------------------------------------------


@pytest.mark.parametrize("strength", STRENGTHS)
def test_lists_have_no_duplicates_and_no_padding_when_candidates_suffice(strength: float) -> None:
    candidates, scores, is_tail = _random_case(3, n_cand=40)
    out = rerank_tail(candidates, scores, is_tail, strength, 20)
    assert (out >= 0).all()
    assert all(len(set(row)) == 20 for row in out.tolist())
    assert all(set(row) <= set(cand) for row, cand in zip(out, candidates, strict=True))


@pytest.mark.parametrize("strength", STRENGTHS)
def test_short_candidate_lists_are_padded_at_the_end(strength: float) -> None:
    candidates = np.array([[4, 1, -1, -1], [-1, -1, -1, -1], [0, 2, 3, 5]])
    scores = np.array([[2.0, 1.0, -np.inf, -np.inf], [-np.inf] * 4, [4.0, 3.0, 2.0, 1.0]])
    is_tail = np.array([False, True, False, True, False, True])
    out = rerank_tail(candidates, scores, is_tail, strength, 6)
    assert out.shape == (3, 6)
    assert sorted(out[0, :2]) == [1, 4] and (out[0, 2:] == -1).all()
    assert (out[1] == -1).all()
    assert sorted(out[2, :4]) == [0, 2, 3, 5] and (out[2, 4:] == -1).all()


def test_the_vectorised_greedy_matches_the_objective_evaluated_everywhere() -> None:
    # Coarse scores make exact ties both in relevance and between head and tail candidates.
    candidates, scores, is_tail = _random_case(4, n_users=150, n_cand=25, round_to=1, pad=True)
    for strength in [0.1, 0.25, 1 / 3, 0.5, 0.6, 0.75, 0.9, 1.0]:
        expected = _greedy_reference(candidates, scores, is_tail, strength, 10)
        np.testing.assert_array_equal(
            rerank_tail(candidates, scores, is_tail, strength, 10), expected
        )


def test_results_do_not_depend_on_how_users_are_batched() -> None:
    candidates, scores, is_tail = _random_case(5, n_users=300, n_cand=30)
    whole = rerank_tail(candidates, scores, is_tail, 0.5, 10)
    parts = [
        rerank_tail(candidates[i : i + 7], scores[i : i + 7], is_tail, 0.5, 10)
        for i in range(0, 300, 7)
    ]
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    np.testing.assert_array_equal(whole, rerank_tail(candidates, scores, is_tail, 0.5, 10))


# --- a worked example -----------------------------------------------------------------------


def test_hand_worked_example() -> None:
    is_tail = np.zeros(10, dtype=bool)
    is_tail[[2, 4, 5, 7, 9]] = True
    candidates = np.array(
        [
            [0, 1, 2, 3, 4, 5],  # rel 1, .8, .6, .4, .2, 0; tail 2, 4, 5
            [0, 1, 3, 6, 8, -1],  # head items only
            [1, 9, 3, 7, -1, -1],  # equal scores: rel 0 for all
            [0, 2, 1, -1, -1, -1],  # rel 1, .5, 0; tail 2
        ]
    )
    ninf = -np.inf
    scores = np.array(
        [
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
            [0.9, 0.8, 0.7, 0.6, 0.5, ninf],
            [2.0, 2.0, 2.0, 2.0, ninf, ninf],
            [3.0, 2.0, 1.0, ninf, ninf, ninf],
        ]
    )
    # strength .25, value = .75 rel + .25 tail_bonus, tail_bonus = 1 - n_tail / (|S| + 1):
    # user 0: pos 0 head 0 .75 > tail 2 .45+.25=.70 -> 0; pos 1 head 1 .60 < tail 2 .70 -> 2;
    #         pos 2 head 1 .60 > tail 4 .15+.25*(2/3)=.317 -> 1; pos 3 head 3 .30 < tail 4
    #         .15+.25*.75=.3375 -> 4.
    # user 1: no tail candidate, the model's order.
    # user 2: relevance is flat, so any positive strength lists the tail first: 9, 7, then 1, 3.
    # user 3: pos 0 head 0 .75 > tail 2 .375+.25=.625 -> 0; pos 1 tail 2 .625 > head 1 0 -> 2.
    out = rerank_tail(candidates, scores, is_tail, 0.25, 4)
    np.testing.assert_array_equal(out, [[0, 2, 1, 4], [0, 1, 3, 6], [9, 7, 1, 3], [0, 2, 1, -1]])
    # strength .5, value = .5 rel + .5 tail_bonus:
    # user 0: pos 0 tail 2 .3+.5=.8 > head 0 .5 -> 2; pos 1 head 0 .5 > tail 4 .1+.25 -> 0;
    #         pos 2 tail 4 .1+.5*(2/3)=.433 > head 1 .4 -> 4; pos 3 head 1 .4 > tail 5 0+.25 -> 1.
    # user 3: pos 0 tail 2 .25+.5=.75 > head 0 .5 -> 2; then head 0, head 1.
    out = rerank_tail(candidates, scores, is_tail, 0.5, 4)
    np.testing.assert_array_equal(out, [[2, 0, 4, 1], [0, 1, 3, 6], [9, 7, 1, 3], [2, 0, 1, -1]])


def test_exact_ties_go_to_the_candidate_the_model_ranked_higher() -> None:
    is_tail = np.array([False, False, True])
    # Strength .5: head 0 has .5 * 1 = .5, tail 2 has .5 * 0 + .5 * 1 = .5.
    out = rerank_tail(np.array([[0, 2]]), np.array([[1.0, 0.0]]), is_tail, 0.5, 2)
    np.testing.assert_array_equal(out, [[0, 2]])
    out = rerank_tail(np.array([[2, 0]]), np.array([[1.0, 0.0]]), is_tail, 0.5, 2)
    np.testing.assert_array_equal(out, [[2, 0]])


# --- how the knob behaves -------------------------------------------------------------------


def test_mean_tail_share_grows_with_strength() -> None:
    candidates, scores, is_tail = _random_case(6, n_users=500, n_items=1000, n_cand=100)
    k = 20
    shares = [
        _tail_count(rerank_tail(candidates, scores, is_tail, s, k), is_tail).mean() / k
        for s in STRENGTHS
    ]
    assert all(b >= a for a, b in itertools.pairwise(shares)), shares
    # About 30 % tail without re-ranking; at 1 every tail candidate that fits in the list.
    most = np.minimum(k, _tail_count(candidates, is_tail)).mean() / k
    assert shares[0] < 0.4 and shares[-1] == pytest.approx(most) and most > 0.95
    assert shares[1] > shares[0] and shares[-1] > shares[2]  # the knob does move the lists


def test_moderate_strength_keeps_head_items_when_relevance_gaps_are_large() -> None:
    rng = np.random.default_rng(7)
    n_users, k = 100, 10
    is_tail = np.zeros(40, dtype=bool)
    is_tail[20:] = True
    # Every user: 20 head candidates scored in [.8, 1], then 20 tail ones in [0, .2].
    candidates = np.concatenate(
        [
            np.stack([rng.permutation(20) for _ in range(n_users)]),
            np.stack([20 + rng.permutation(20) for _ in range(n_users)]),
        ],
        axis=1,
    )
    scores = np.concatenate(
        [
            -np.sort(-rng.uniform(0.8, 1.0, (n_users, 20)), axis=1),
            -np.sort(-rng.uniform(0.0, 0.2, (n_users, 20)), axis=1),
        ],
        axis=1,
    )
    # A tail item needs strength * bonus > (1 - strength) * gap, and the gap is >= .6 here.
    low = _tail_count(rerank_tail(candidates, scores, is_tail, 0.25, k), is_tail)
    assert (low == 0).all()
    # At .5 it needs bonus > gap >= .6, i.e. fewer than 40 % tail items so far: mixed lists.
    mid = _tail_count(rerank_tail(candidates, scores, is_tail, 0.5, k), is_tail)
    assert (mid >= 1).all() and (mid <= 4).all()
    high = _tail_count(rerank_tail(candidates, scores, is_tail, 1.0, k), is_tail)
    assert (high == k).all()


# --- the dense ranking path (tailor.ranking.rank.rank_scores) with the re-ranker ------------


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0])
def test_rerank_scores_excludes_seen_items_and_matches_rerank_tail(strength: float) -> None:
    rng = np.random.default_rng(8)
    n_users, n_items, k = 30, 80, 10
    score_matrix = rng.normal(size=(n_users, n_items)).astype(np.float32)
    exclude = [rng.choice(n_items, rng.integers(0, 60), replace=False) for _ in range(n_users)]
    exclude[0] = np.arange(n_items - 5)  # only 5 unseen items: a padded list
    is_tail = rng.random(n_items) < 0.3
    out = rerank_scores(score_matrix, exclude, is_tail, strength, k, n_candidates=40)
    assert out.shape == (n_users, k) and out.dtype == np.int64
    for row, seen in zip(out, exclude, strict=True):
        assert not set(row[row >= 0]) & set(seen.tolist())
    np.testing.assert_array_equal(out[0, 5:], -1)
    assert (out[1:] >= 0).all()

    candidates = top_k(score_matrix, exclude, 40)
    gathered = np.where(
        candidates >= 0, np.take_along_axis(score_matrix, np.maximum(candidates, 0), 1), -np.inf
    )
    np.testing.assert_array_equal(out, rerank_tail(candidates, gathered, is_tail, strength, k))
    if strength == 0.0:
        np.testing.assert_array_equal(out, top_k(score_matrix, exclude, k))


def test_rerank_scores_tolerates_non_finite_model_scores() -> None:
    score_matrix = np.array([[np.nan, 0.5, -np.inf, 0.9, 0.1]])
    is_tail = np.array([True, False, True, False, False])
    out = rerank_scores(score_matrix, [np.array([], dtype=np.int64)], is_tail, 1.0, 5, 5)
    # NaN ranks last but stays eligible: strength 1 moves the tail item 0 first. -inf means
    # the model cannot rank item 2 at all, so not even the tail bonus brings it in.
    np.testing.assert_array_equal(out, [[0, 3, 1, 4, -1]])


def test_rerank_scores_validates_its_inputs() -> None:
    scores = np.zeros((2, 5))
    no_exclude = [np.array([], dtype=np.int64)] * 2
    with pytest.raises(ValueError, match="is_tail"):
        rerank_scores(scores, no_exclude, np.zeros(4, dtype=bool), 0.5, 3)
    # Fewer candidates than k: the pool is never smaller than the list.
    assert rerank_scores(scores, no_exclude, np.zeros(5, dtype=bool), 0.5, 3, 2).shape == (2, 3)
    with pytest.raises(ValueError, match="strength"):
        rerank_scores(scores, no_exclude, np.zeros(5, dtype=bool), -0.1, 3)


# --- input checks ---------------------------------------------------------------------------


def _tiny() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array([[0, 1, 2]]), np.array([[3.0, 2.0, 1.0]]), np.array([True, False, True])


@pytest.mark.parametrize("strength", [1.5, -0.01, float("nan")])
def test_strength_outside_zero_one_is_rejected(strength: float) -> None:
    with pytest.raises(ValueError, match="strength"):
        rerank_tail(*_tiny(), strength, 2)


def test_malformed_inputs_are_rejected_with_clear_messages() -> None:
    candidates, scores, is_tail = _tiny()
    with pytest.raises(ValueError, match="shape"):
        rerank_tail(candidates, scores[:, :2], is_tail, 0.5, 2)
    with pytest.raises(ValueError, match="2-D"):
        rerank_tail(candidates[0], scores[0], is_tail, 0.5, 2)
    with pytest.raises(ValueError, match="bool"):
        rerank_tail(candidates, scores, np.array([1, 0, 1]), 0.5, 2)
    with pytest.raises(ValueError, match="outside"):
        rerank_tail(np.array([[0, 1, 3]]), scores, is_tail, 0.5, 2)
    with pytest.raises(ValueError, match="k must"):
        rerank_tail(candidates, scores, is_tail, 0.5, 0)
    with pytest.raises(ValueError, match="non-increasing"):
        rerank_tail(candidates, np.array([[1.0, 2.0, 3.0]]), is_tail, 0.5, 2)
    with pytest.raises(ValueError, match="padded"):
        rerank_tail(np.array([[0, -1, 2]]), np.array([[3.0, -np.inf, 1.0]]), is_tail, 0.0, 2)


def test_importing_rerank_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, tailor.ranking.rank; "
        "print(sorted(m for m in ('matplotlib', 'prefect', 'mlflow', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_single_row_path_agrees_with_the_block_path(rng):
    # A live request re-ranks one row in plain Python; it must pick exactly what the
    # vectorised path picks, ties, padding and infinities included.
    from tailor.ranking.rerank import _rerank_block, _rerank_one

    for trial in range(300):
        n_items = int(rng.integers(5, 40))
        n_cand = int(rng.integers(1, n_items))
        cands = rng.permutation(n_items)[:n_cand].astype(np.int64)
        scores = np.sort(
            rng.choice([0.0, 0.5, 1.0, 2.0], n_cand) if trial % 3 == 0 else rng.normal(size=n_cand)
        )[::-1].astype(np.float32)
        if trial % 5 == 0:
            scores[0] = np.inf
        if trial % 7 == 0:
            scores[-1] = -np.inf
        pad = int(rng.integers(0, 4))
        cands = np.concatenate([cands, np.full(pad, -1)])
        scores = np.concatenate([scores, np.full(pad, -np.inf, dtype=np.float32)])
        is_tail = rng.random(n_items) < 0.5
        strength = float(rng.choice([0.05, 0.1, 0.5, 1.0]))
        k = int(rng.integers(1, n_cand + pad + 3))
        block = _rerank_block(cands[None, :], scores[None, :], is_tail, strength, k)[0]
        assert _rerank_one(cands, scores, is_tail, strength, k) == block.tolist(), trial
