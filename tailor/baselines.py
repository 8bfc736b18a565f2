"""Reference recommenders that every trained model must beat in the same run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class MostPopular:
    """The same list for everyone: items by training popularity (ties to the lower index)."""

    name = "most-popular"

    def __init__(self, popularity: np.ndarray) -> None:
        popularity = np.asarray(popularity)
        if popularity.ndim != 1:
            raise ValueError(f"popularity must be 1-D, got shape {popularity.shape}")
        self.popularity = popularity.astype(np.float32)
        self.n_items = len(popularity)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        # A real copy per user, not a broadcast view, so callers may write into the scores.
        return np.tile(self.popularity, (len(histories), 1))


class TextCosine:
    """Text only: cosine between the user's mean item vector and every item's vector.

    This is what the language model gives with no training on interactions, so a fine-tuned
    model's gain over it is the gain from learning on clicks.
    """

    name = "text-cosine"

    def __init__(self, item_vectors: np.ndarray) -> None:
        vectors = np.asarray(item_vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"item_vectors must be 2-D (items x dim), got {vectors.shape}")
        # Normalised again so that slightly off inputs still give true cosines.
        self.item_vectors = _normalise_rows(vectors)
        self.n_items = len(vectors)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        n_users = len(histories)
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=n_users)
        users = np.zeros((n_users, self.item_vectors.shape[1]), dtype=np.float32)
        has_history = lengths > 0
        if has_history.any():
            items = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
            starts = (np.cumsum(lengths) - lengths)[has_history]
            # The sum points the same way as the mean; normalising drops the length.
            users[has_history] = np.add.reduceat(self.item_vectors[items], starts, axis=0)
        users = _normalise_rows(users)
        return users @ self.item_vectors.T


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # Zero rows stay zero (an empty history scores every item 0) instead of turning into NaN.
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
