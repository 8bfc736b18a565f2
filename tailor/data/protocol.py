"""The evaluation protocol (docs/ARCHITECTURE.md) as data: who is evaluated on what, from what.

- Cold items: a seeded share of items is held out of training entirely. Every event on them is
  a cold-item test case: history = the user's warm events before it, target = the cold item,
  ranked over the whole catalogue. Collaborative models cannot score these items; text can.
- Warm world: the remaining events, split per user in time: last = test, previous = validation.
  Models are tuned on validation (history = train) and refit on train + validation for the test
  event (history = train + validation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from tailor import columns as C


def choose_cold_items(interactions: pl.DataFrame, share: float, seed: int) -> list[str]:
    """A seeded random share of the items that have at least one event."""
    if share <= 0:
        return []
    items = sorted(interactions[C.ITEM_ID].unique().to_list())
    n = round(share * len(items))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(items), size=min(n, len(items) - 1), replace=False)
    return sorted(items[i] for i in picked)


@dataclass
class Histories:
    """Per-user item positions for training and the held-out evaluations."""

    users: list[str]
    train: list[np.ndarray]  # warm train events, oldest first
    valid_users: np.ndarray  # rows of `users` with a validation event
    valid_targets: np.ndarray
    test_users: np.ndarray
    test_targets: np.ndarray
    n_items: int
    valid_target_of: dict[int, int] = field(default_factory=dict)
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cold_histories: list[np.ndarray] = field(default_factory=list)
    cold_targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def valid_history(self) -> list[np.ndarray]:
        return [self.train[u] for u in self.valid_users]

    def train_and_valid(self) -> list[np.ndarray]:
        """Every user's train events followed by their validation event: the refit data."""
        out = list(self.train)
        for user, item in self.valid_target_of.items():
            out[user] = np.append(out[user], item)
        return out

    def test_history(self) -> list[np.ndarray]:
        # The test event is predicted from everything before it, validation event included.
        return [np.append(self.train[u], self.valid_target_of[u]) for u in self.test_users]


def build_histories(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    cold_events: pl.DataFrame | None = None,
) -> Histories:
    """Histories from the split warm interactions (with C.SPLIT and "seq") and cold events."""
    position = {item: i for i, item in enumerate(items[C.ITEM_ID].to_list())}
    frame = interactions.sort([C.USER_ID, "seq"]).with_columns(
        pl.col(C.ITEM_ID).replace_strict(position, return_dtype=pl.Int64).alias("pos")
    )
    users = frame[C.USER_ID].unique(maintain_order=True).to_list()
    row_of = {u: i for i, u in enumerate(users)}
    grouped = (
        frame.filter(pl.col(C.SPLIT) == C.TRAIN)
        .group_by(C.USER_ID, maintain_order=True)
        .agg(pl.col("pos"))
    )
    train = [np.zeros(0, dtype=np.int64) for _ in users]
    for user, pos in zip(grouped[C.USER_ID].to_list(), grouped["pos"].to_list(), strict=True):
        train[row_of[user]] = np.asarray(pos, dtype=np.int64)

    def held_out(split: str) -> tuple[np.ndarray, np.ndarray]:
        part = frame.filter(pl.col(C.SPLIT) == split)
        rows = np.array([row_of[u] for u in part[C.USER_ID].to_list()], dtype=np.int64)
        return rows, part["pos"].to_numpy().astype(np.int64)

    valid_users, valid_targets = held_out(C.VALID)
    test_users, test_targets = held_out(C.TEST)
    hist = Histories(
        users=users,
        train=train,
        valid_users=valid_users,
        valid_targets=valid_targets,
        test_users=test_users,
        test_targets=test_targets,
        n_items=len(position),
        valid_target_of=dict(zip(valid_users.tolist(), valid_targets.tolist(), strict=True)),
    )
    if cold_events is not None and cold_events.height:
        _add_cold_cases(hist, frame, cold_events, position)
    return hist


def _add_cold_cases(
    hist: Histories, warm: pl.DataFrame, cold_events: pl.DataFrame, position: dict[str, int]
) -> None:
    """For each event on a cold item: the user's warm events strictly before it."""
    by_user = {
        user: (group[C.TIMESTAMP].to_numpy(), group["pos"].to_numpy())
        for (user,), group in warm.group_by(C.USER_ID, maintain_order=True)
    }
    histories, targets = [], []
    for user, item, when in cold_events.select(C.USER_ID, C.ITEM_ID, C.TIMESTAMP).iter_rows():
        times, pos = by_user.get(user, (np.zeros(0, dtype="datetime64[us]"), np.zeros(0)))
        before = pos[: np.searchsorted(times, np.datetime64(when.replace(tzinfo=None)), "left")]
        if len(before) == 0:
            continue  # nothing known about the user yet: not a cold-item case
        histories.append(np.asarray(before, dtype=np.int64))
        targets.append(position[item])
    hist.cold_histories = histories
    hist.cold_targets = np.asarray(targets, dtype=np.int64)
    hist.cold_items = np.asarray(
        sorted({position[i] for i in cold_events[C.ITEM_ID].unique().to_list()}), dtype=np.int64
    )
