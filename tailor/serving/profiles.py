"""New users known only by a profile borrow what users with a similar profile text consumed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ProfilePool:
    """Known users' profile-text vectors and what they consumed.

    A new user with only a profile is scored by what the `neighbours` users with the closest
    profile text consumed, shrunk towards everyone's popularity by `prior` pseudo-users:
    ``share(i) = (n * neighbour_share(i) + prior * global_share(i)) / (n + prior)``.
    (The mean of the neighbours' model vectors was tried first: it predicts their next items,
    not what a group likes, and lost to most-popular on MovieLens; see README.)
    """

    def __init__(
        self,
        users: list[str],
        text: np.ndarray,
        histories: Sequence[Sequence[int]],
        n_items: int,
        neighbours: int,
        prior: float,
    ) -> None:
        self.users = users
        self.row = {u: i for i, u in enumerate(users)}
        self.text = np.ascontiguousarray(text, dtype=np.float32)
        self.histories = [np.unique(np.asarray(h, dtype=np.int64)) for h in histories]
        counts = np.zeros(n_items, dtype=np.float64)
        for h in self.histories:
            counts[h] += 1
        self.global_share = counts / max(len(users), 1)
        self.neighbours = neighbours
        self.prior = prior

    def shares(
        self, profile_vectors: np.ndarray, n_items: int, exclude: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """(rows, n_items) blended consumption shares; `exclude` leaves a user out per row
        (evaluation: nobody borrows from themselves)."""
        sims = np.atleast_2d(profile_vectors) @ self.text.T
        if exclude is not None:
            for row, user in enumerate(exclude):
                if user in self.row:
                    sims[row, self.row[user]] = -np.inf
        k = max(1, min(self.neighbours, sims.shape[1] - (1 if exclude is not None else 0)))
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out = np.zeros((len(sims), n_items), dtype=np.float64)
        glob = np.zeros(n_items)
        glob[: len(self.global_share)] = self.global_share[:n_items]
        for row, users in enumerate(nearest):
            for user in users:
                out[row, self.histories[user]] += 1
        return (out + self.prior * glob) / (k + self.prior)
