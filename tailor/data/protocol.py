"""The evaluation protocol (docs/ARCHITECTURE.md) as data: who is evaluated on what, from what.

- Cold items: a seeded share of items is held out of training entirely. Every event on them is
  a cold-item test case: history = the user's warm events before it, target = the cold item,
  ranked over the whole catalogue. Collaborative models cannot score these items; text can.
- Warm world: the remaining events, split per user in time (`tailor.data.split`): the last
  positive = test, the positive before it = validation. Models are searched on validation
  (history = train) and refit on train + validation for the test event (history = train +
  validation events).
- Only positives are targets (held-out or cold); every event is history.
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
    """Per-user item positions for training and the held-out evaluations.

    Rows of `users` index `train` and `train_liked`; `*_users` arrays hold such rows. A
    `liked` mask marks the positives of a history: training targets and reasons use them,
    every event is input.
    """

    users: list[str]
    train: list[np.ndarray]  # warm train events, oldest first
    valid_users: np.ndarray  # rows of `users` with a validation event
    valid_targets: np.ndarray
    test_users: np.ndarray
    test_targets: np.ndarray
    n_items: int
    train_liked: list[np.ndarray] = field(default_factory=list)
    # Per user with a validation target: that target and the events after it before the test
    # target (positions, liked flags). The test case's history is train + these.
    valid_events: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    test_times: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="datetime64[us]"))
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cold_histories: list[np.ndarray] = field(default_factory=list)
    cold_targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if not self.train_liked:
            self.train_liked = [np.ones(len(h), dtype=bool) for h in self.train]

    def valid_history(self) -> list[np.ndarray]:
        return [self.train[u] for u in self.valid_users]

    def train_and_valid(self) -> list[np.ndarray]:
        """Every user's train events followed by their validation events: the refit data."""
        out = list(self.train)
        for user, (items, _) in self.valid_events.items():
            out[user] = np.concatenate([out[user], items])
        return out

    def train_and_valid_liked(self) -> list[np.ndarray]:
        out = list(self.train_liked)
        for user, (_, liked) in self.valid_events.items():
            out[user] = np.concatenate([out[user], liked])
        return out

    def test_history(self) -> list[np.ndarray]:
        # The test event is predicted from everything before it, validation events included.
        refit = self.train_and_valid()
        return [refit[u] for u in self.test_users]

    def train_positives(self) -> list[np.ndarray]:
        """Only the positive train events: what the baselines are fitted on."""
        return [h[m] for h, m in zip(self.train, self.train_liked, strict=True)]

    def train_and_valid_positives(self) -> list[np.ndarray]:
        pairs = zip(self.train_and_valid(), self.train_and_valid_liked(), strict=True)
        return [h[m] for h, m in pairs]


def _positions(frame: pl.DataFrame, position: dict[str, int]) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(C.ITEM_ID).replace_strict(position, return_dtype=pl.Int64).alias("pos")
    )


def _liked(frame: pl.DataFrame) -> pl.Expr:
    return pl.col(C.POSITIVE) if C.POSITIVE in frame.columns else pl.lit(True)


def build_histories(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    cold_events: pl.DataFrame | None = None,
) -> Histories:
    """Histories from the split warm interactions (with C.SPLIT, C.POSITIVE and "seq") and the
    cold events (with C.POSITIVE)."""
    position = {item: i for i, item in enumerate(items[C.ITEM_ID].to_list())}
    frame = _positions(interactions.sort([C.USER_ID, "seq"]), position).with_columns(
        _liked(interactions).alias("liked")
    )
    users = frame[C.USER_ID].unique(maintain_order=True).to_list()
    row_of = {u: i for i, u in enumerate(users)}

    def grouped(split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        part = frame.filter(pl.col(C.SPLIT) == split).group_by(C.USER_ID, maintain_order=True)
        agg = part.agg(pl.col("pos"), pl.col("liked"), pl.col(C.TIMESTAMP).first())
        return {
            user: (np.asarray(pos, dtype=np.int64), np.asarray(liked, dtype=bool), when)
            for user, pos, liked, when in agg.iter_rows()
        }

    train_rows, valid_rows, test_rows = grouped(C.TRAIN), grouped(C.VALID), grouped(C.TEST)
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    train = [train_rows.get(u, empty)[0] for u in users]
    train_liked = [train_rows.get(u, empty)[1] for u in users]
    valid_users = np.array([row_of[u] for u in valid_rows], dtype=np.int64)
    valid_targets = np.array([v[0][0] for v in valid_rows.values()], dtype=np.int64)
    test_users = np.array([row_of[u] for u in test_rows], dtype=np.int64)
    test_targets = np.array([v[0][0] for v in test_rows.values()], dtype=np.int64)
    test_times = np.array(
        [np.datetime64(v[2].replace(tzinfo=None), "us") for v in test_rows.values()],
        dtype="datetime64[us]",
    )
    hist = Histories(
        users=users,
        train=train,
        valid_users=valid_users,
        valid_targets=valid_targets,
        test_users=test_users,
        test_targets=test_targets,
        n_items=len(position),
        train_liked=train_liked,
        valid_events={row_of[u]: (v[0], v[1]) for u, v in valid_rows.items()},
        test_times=test_times,
    )
    if cold_events is not None and cold_events.height:
        # By user, stably: the cases' order is then the same however the users were stored.
        cold_events = cold_events.sort(C.USER_ID, maintain_order=True)
        _add_cold_cases(hist, frame, cold_events, position)
    return hist


def _add_cold_cases(
    hist: Histories, warm: pl.DataFrame, cold_events: pl.DataFrame, position: dict[str, int]
) -> None:
    hist.cold_histories, hist.cold_targets = cold_item_cases(warm, cold_events, position)
    hist.cold_items = np.asarray(
        sorted({position[i] for i in cold_events[C.ITEM_ID].unique().to_list()}), dtype=np.int64
    )


def cold_item_cases(
    warm: pl.DataFrame, cold_events: pl.DataFrame, position: dict[str, int]
) -> tuple[list[np.ndarray], np.ndarray]:
    """For each positive event on a cold item: the user's warm events strictly before it.

    `warm` has C.USER_ID, C.TIMESTAMP and "pos" (item positions), in time order per user.
    Returns (histories, target positions); users with no warm event before are not a case.
    """
    by_user = {
        user: (group[C.TIMESTAMP].to_numpy(), group["pos"].to_numpy())
        for (user,), group in warm.group_by(C.USER_ID, maintain_order=True)
    }
    liked = (
        cold_events[C.POSITIVE].to_list()
        if C.POSITIVE in cold_events.columns
        else [True] * cold_events.height
    )
    histories, targets = [], []
    rows = cold_events.select(C.USER_ID, C.ITEM_ID, C.TIMESTAMP).iter_rows()
    for (user, item, when), positive in zip(rows, liked, strict=True):
        if not positive:
            continue  # only positives are targets
        times, pos = by_user.get(user, (np.zeros(0, dtype="datetime64[us]"), np.zeros(0)))
        before = pos[: np.searchsorted(times, np.datetime64(when.replace(tzinfo=None)), "left")]
        if len(before) == 0:
            continue  # nothing known about the user yet: not a cold-item case
        histories.append(np.asarray(before, dtype=np.int64))
        targets.append(position[item])
    return histories, np.asarray(targets, dtype=np.int64)


def event_histories(
    interactions: pl.DataFrame, items: pl.DataFrame
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Every user's events in time order (positions, liked flags): what a production fit
    learns from. `interactions` needs C.POSITIVE; items it does not know are an error."""
    position = {item: i for i, item in enumerate(items[C.ITEM_ID].to_list())}
    ordered = interactions.sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)
    frame = _positions(ordered, position).with_columns(_liked(interactions).alias("liked"))
    grouped = frame.group_by(C.USER_ID, maintain_order=True).agg(pl.col("pos"), pl.col("liked"))
    users = grouped[C.USER_ID].to_list()
    histories = [np.asarray(p, dtype=np.int64) for p in grouped["pos"].to_list()]
    liked = [np.asarray(m, dtype=bool) for m in grouped["liked"].to_list()]
    return users, histories, liked
