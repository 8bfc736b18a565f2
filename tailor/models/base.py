"""What every recommender offers the evaluation and the ranking path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Recommender(Protocol):
    """Anything that scores every item for a batch of users."""

    name: str
    n_items: int

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores for each user's history (int64 item indices in time order, maybe empty).

        Returns float32 of shape (len(histories), n_items); higher is better.
        """
        ...
