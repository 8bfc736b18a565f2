"""What is known about users and items while serving, independent of any model version."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.data.load import load_clean
from tailor.serving.encoder import TextVectors
from tailor.settings import Settings


def profile_text(profile: Mapping[str, object], fields: Sequence[str]) -> str:
    """'age: 24; gender: M; occupation: technician' over the configured fields that are set."""
    parts = []
    for name in fields:
        value = profile.get(name)
        if value is not None and str(value).strip():
            parts.append(f"{name}: {str(value).strip()}")
    return "; ".join(parts)


@dataclass
class LiveState:
    """Users and items as of the latest data plus everything received live since."""

    histories: dict[str, list[str]]  # user -> item ids, oldest first
    profiles: dict[str, dict[str, str]]  # user -> profile fields
    items: dict[str, tuple[str, str]]  # item id -> (text, label): the catalogue to serve
    profile_users: list[str] = field(default_factory=list)  # rows of `profile_vectors`
    profile_vectors: np.ndarray | None = None  # language-model vectors of their profile texts
    liked: dict[str, list[bool]] = field(default_factory=dict)  # per history event: a positive?
    positive_threshold: float | None = None  # data.positive_min_weight, resolved
    # Users first seen live (not in the data), least recently used first: at most
    # `max_live_users` stay in memory; an evicted one is rebuilt from the live log on return.
    live_users: OrderedDict[str, None] = field(default_factory=OrderedDict)
    max_live_users: int = 0  # 0 = no bound
    evicted: int = 0
    # Newest events kept per user (0 = no bound): what a request walks and a reload reads is
    # bounded however long a user stays; the live log keeps every event for the nightly run.
    max_history: int = 0

    def add_event(self, user: str, item: str, weight: float) -> None:
        """Append one event to the user's history (live feedback), dropping the oldest beyond
        `max_history`."""
        if user not in self.histories:
            self.live_users[user] = None
        history = self.histories.setdefault(user, [])
        history.append(item)
        threshold = self.positive_threshold
        flags = self.liked.setdefault(user, [])
        flags.append(threshold is None or weight >= threshold)
        over = len(history) - self.max_history
        if self.max_history and over > 0:
            del history[:over]
            del flags[:over]
        self.touch(user)

    def touch(self, user: str) -> None:
        """Mark a live user as just used; evict the least recently used beyond the bound."""
        if user not in self.live_users:
            return
        self.live_users.move_to_end(user)
        while self.max_live_users and len(self.live_users) > self.max_live_users:
            gone, _ = self.live_users.popitem(last=False)
            self.histories.pop(gone, None)
            self.liked.pop(gone, None)
            self.evicted += 1

    def restore(self, user: str, events: Sequence[tuple[str, float]]) -> None:
        """Bring back a live user evicted from memory, from their events in the live log."""
        if user in self.histories or not events:
            return
        for item, weight in events:
            self.add_event(user, item, weight)

    def liked_of(self, user: str | None) -> list[bool]:
        if not user:
            return []
        flags = self.liked.get(user)
        return list(flags) if flags is not None else [True] * len(self.histories.get(user, []))

    @classmethod
    def from_frames(
        cls,
        interactions: pl.DataFrame,
        items: pl.DataFrame,
        users: pl.DataFrame | None,
        profile_fields: Sequence[str],
        positive_threshold: float | None = None,
        max_history: int = 0,
    ) -> LiveState:
        ordered = interactions.sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)
        weight = pl.col(C.WEIGHT) if C.WEIGHT in ordered.columns else pl.lit(1.0)
        positive = pl.lit(True) if positive_threshold is None else weight >= positive_threshold
        grouped = (
            ordered.with_columns(positive.alias(C.POSITIVE))
            .group_by(C.USER_ID, maintain_order=True)
            .agg(pl.col(C.ITEM_ID), pl.col(C.POSITIVE))
        )
        if max_history:
            grouped = grouped.with_columns(
                pl.col(C.ITEM_ID).list.tail(max_history), pl.col(C.POSITIVE).list.tail(max_history)
            )
        ids = grouped[C.USER_ID].to_list()
        histories = dict(zip(ids, grouped[C.ITEM_ID].to_list(), strict=True))
        liked = dict(zip(ids, grouped[C.POSITIVE].to_list(), strict=True))
        catalogue = {
            item: (text, label)
            for item, text, label in items.select(C.ITEM_ID, C.TEXT, C.LABEL).iter_rows()
        }
        profiles: dict[str, dict[str, str]] = {}
        if users is not None:
            present = [f for f in profile_fields if f in users.columns]
            if present:
                for row in users.select(C.USER_ID, *present).iter_rows(named=True):
                    user = row.pop(C.USER_ID)
                    profiles[user] = {k: v for k, v in row.items() if v is not None}
        return cls(
            histories=histories,
            profiles=profiles,
            items=catalogue,
            liked=liked,
            positive_threshold=positive_threshold,
            max_history=max_history,
        )

    def embed_profiles(self, texts: TextVectors, fields: Sequence[str]) -> None:
        """Vectors of every known profile (once per state; model versions reuse them)."""
        users = [u for u in self.profiles if profile_text(self.profiles[u], fields)]
        strings = [profile_text(self.profiles[u], fields) for u in users]
        unique = sorted(set(strings))
        if not unique:
            self.profile_users, self.profile_vectors = [], None
            return
        vectors = texts.encoder.encode(unique)
        row_of = {s: i for i, s in enumerate(unique)}
        self.profile_users = users
        self.profile_vectors = vectors[[row_of[s] for s in strings]]

    def snapshot(self) -> LiveState:
        """What a worker thread building another model version reads while the event loop
        keeps appending: a copy of the catalogue, and the histories themselves, not copied
        (copying every user's would stall the loop for as long as there are users). The
        build reads only the profile users' lists, each copied whole by `list()`, which the
        interpreter does at once, so a list the loop appends to or trims is never read torn;
        the dict of users is never iterated there."""
        return LiveState(
            histories=self.histories,
            liked={},
            positive_threshold=self.positive_threshold,
            max_live_users=self.max_live_users,
            max_history=self.max_history,
            profiles=self.profiles,
            items=dict(self.items),
            profile_users=self.profile_users,
            profile_vectors=self.profile_vectors,
        )


def load_live_state(settings: Settings) -> LiveState:
    """Clean data of the configured source plus the live log, as the nightly run sees it."""
    clean = load_clean(settings)
    state = LiveState.from_frames(
        clean.interactions,
        clean.items,
        clean.users,
        settings.serve.profile_fields,
        settings.data.positive_threshold,
        settings.serve.max_history_events,
    )
    state.max_live_users = settings.serve.max_live_users
    return state
