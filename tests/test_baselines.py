import numpy as np

from tailor.baselines import MostPopular, TextCosine
from tailor.evaluate import top_k


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
