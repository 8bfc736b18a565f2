"""The stateful side of `tailor serve`, without HTTP: load, reload, and the operations.

Threading contract (the server keeps it): `load`, `champion_version` and `build` are slow and
run in worker threads; every other method runs on the event loop, one at a time, so the live
model and state are never read while being changed and need no locks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
import torch

from tailor import columns as C
from tailor.data.livelog import LiveEvent, LiveItem, LiveLog
from tailor.models.encoder import encoder_id
from tailor.models.index import set_search_threads
from tailor.serving.encoder import TextVectors, check_encoder, has_text_space
from tailor.serving.live import LiveModel, build_live_model
from tailor.serving.recommend import LiveQuery, LiveResult, live_sequence, recommend
from tailor.serving.state import LiveState, load_live_state
from tailor.serving.store import RecommendationStore
from tailor.settings import EmbedSettings, Settings
from tailor.tracking.registry import load_bundle, resolve_version
from tailor.tracking.runs import client_for

log = logging.getLogger(__name__)


class LiveItemsFullError(RuntimeError):
    """No room for more live items until the next training run."""


class UnknownItemsError(ValueError):
    """Item ids the served catalogue does not have; nothing was applied."""

    def __init__(self, items: Sequence[str]) -> None:
        self.items = list(items)
        shown = ", ".join(repr(i) for i in self.items[:20])
        more = f" and {len(self.items) - 20} more" if len(self.items) > 20 else ""
        super().__init__(f"unknown item ids: {shown}{more}")


@dataclass
class Readiness:
    ready: bool
    model_version: str | None
    reason: str
    items: int = 0
    users: int = 0
    loaded_at: str | None = None


class Service:
    def __init__(self, settings: Settings, model_version: str | None = None) -> None:
        self.settings = settings
        self.pinned = model_version or settings.serve.model_version
        self.live_log = LiveLog(settings.live_url)
        self.store = RecommendationStore(settings.store_url)
        self.state: LiveState | None = None
        self.model: LiveModel | None = None
        self.texts: TextVectors | None = None  # items and profiles (the catalogue's encoder)
        self.queries: TextVectors | None = None  # free-text queries (int8 copy by default)
        self.error: str = "loading"
        self.loaded_at: str | None = None
        # Vectors of items inserted while this process runs, so a reload re-inserts them
        # into the new version without encoding them again.
        self._inserted: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------ loading (worker threads)

    def _client(self):
        return client_for(self.settings.tracking_uri)

    def champion_version(self) -> str:
        t = self.settings.tracking
        return resolve_version(self._client(), t.model_name, t.champion_alias, self.pinned)

    def _texts_for(self, bundle) -> TextVectors:
        embed = EmbedSettings.model_validate(bundle.settings.get("embed", {}))
        # The model is the bundle's; where it runs is this deployment's choice.
        embed = embed.model_copy(update={"device": self.settings.embed.device})

        if self.texts is not None and self.texts.model_id == encoder_id(embed):
            return self.texts
        serve = self.settings.serve
        texts = TextVectors(
            embed,
            serve.query_cache_size,
            backend=serve.encoder_backend,
            cache_dir=self.settings.cache_dir,
            threads=serve.torch_threads,
            max_pending=serve.encoder_queue_texts,
        )
        if has_text_space(bundle):
            check_encoder(texts, bundle)
        return texts

    def _queries_for(self, texts: TextVectors) -> TextVectors:
        if not self.settings.serve.query_int8:
            return texts
        if self.queries is not None and self.queries.model_id == texts.model_id:
            return self.queries
        serve = self.settings.serve
        return TextVectors(
            texts.embed,
            serve.query_cache_size,
            int8=True,
            backend=serve.encoder_backend,
            cache_dir=self.settings.cache_dir,
            threads=serve.torch_threads,
            max_pending=serve.encoder_queue_texts,
        )

    def use_serving_threads(self) -> None:
        """`serve.torch_threads` for torch and faiss in the calling thread: call it from each
        thread that answers requests (the HTTP app's event loop does at start-up)."""
        torch.set_num_threads(self.settings.serve.torch_threads)
        set_search_threads(self.settings.serve.torch_threads)

    def load(self) -> None:
        """First load: the version to serve, the state (data + live log), the live model."""
        self.use_serving_threads()
        started = time.perf_counter()
        version = self.champion_version()
        t = self.settings.tracking
        bundle = load_bundle(self.settings.tracking_uri, t.model_name, version)
        texts = self._texts_for(bundle)
        state = load_live_state(self.settings)
        state.embed_profiles(texts, self.settings.serve.profile_fields)
        model = build_live_model(bundle, version, self.settings, state, texts)
        queries = self._queries_for(texts)
        self.texts, self.queries, self.state, self.model = texts, queries, state, model
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.error = ""
        log.info(
            "serving model version %s: %d items, %d users (loaded in %.1f s)",
            version,
            model.n_items,
            len(state.histories),
            time.perf_counter() - started,
        )

    def build(
        self, version: str, snapshot: LiveState
    ) -> tuple[LiveModel, TextVectors, TextVectors]:
        """A live model of another version over a snapshot of the state (not yet served)."""
        t = self.settings.tracking
        bundle = load_bundle(self.settings.tracking_uri, t.model_name, version)
        texts = self._texts_for(bundle)
        if texts is not self.texts:
            snapshot.embed_profiles(texts, self.settings.serve.profile_fields)
        model = build_live_model(bundle, version, self.settings, snapshot, texts)
        return model, texts, self._queries_for(texts)

    # ------------------------------------------------------------ event loop

    def readiness(self) -> Readiness:
        if self.model is None or self.state is None:
            return Readiness(False, None, self.error or "loading")
        return Readiness(
            True,
            self.model.version,
            "serving",
            items=self.model.n_items,
            users=len(self.state.histories),
            loaded_at=self.loaded_at,
        )

    def swap(self, model: LiveModel, texts: TextVectors, queries: TextVectors) -> None:
        """Serve `model` from now on, after giving it what arrived while it was being built."""
        assert self.state is not None
        if texts is not self.texts:
            self.state.embed_profiles(texts, self.settings.serve.profile_fields)
        pending = model.pending_items(self.state.items)
        if pending and model.text_space:
            cached = [self._inserted.get(item) for item, _, _ in pending]
            if texts is self.texts and all(v is not None for v in cached):
                vectors = np.stack(cached)
            else:
                vectors = texts.encode([text for _, text, _ in pending])
            model.upsert_items(pending, vectors)
        model.build_profiles(self.state)
        previous = None if self.model is None else self.model.version
        self.model, self.texts, self.queries = model, texts, queries
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        log.info("now serving model version %s (was %s)", model.version, previous)

    def profile_string(self, query: LiveQuery) -> str:
        assert self.state is not None
        return query.profile_string(self.state, self.settings.serve.profile_fields)

    def submit_user_vector(
        self, query: LiveQuery
    ) -> tuple[LiveModel, list[int], asyncio.Future] | None:
        """Start encoding the request's user (history + session) on the batched encoder (on
        the event loop): (the model, the positions, a future of the vector); None when there
        is nothing to encode."""
        assert self.model is not None and self.state is not None
        positions = live_sequence(self.model, self.state, query).positions
        if not positions:
            return None
        return self.model, positions, self.model.users.submit(positions)

    def recommend(
        self,
        query: LiveQuery,
        vectors: dict[str, np.ndarray],
        encoded: tuple[LiveModel, list[int], np.ndarray] | None = None,
    ) -> LiveResult:
        """`encoded` is what `submit_user_vector` gave, resolved; it is used when the model
        and the request's positions are still the ones it was computed for."""
        assert self.model is not None and self.state is not None
        if query.user_id:
            self.state.touch(query.user_id)
        user_vector = None
        if encoded is not None and encoded[0] is self.model:
            user_vector = (encoded[1], encoded[2])
        return recommend(self.model, self.state, query, vectors, user_vector)

    def upsert_items(
        self, items: Sequence[LiveItem], vectors: np.ndarray
    ) -> tuple[list[str], list[str]]:
        """Persist first, then serve: an item answered as inserted survives a restart.

        New ids beyond `serve.max_live_items` since the model was trained are refused
        (`LiveItemsFullError`): the live index and model grow with every one until the next
        nightly run folds them into the catalogue. (The HTTP service runs the three steps
        below for many requests at once.)"""
        [refused] = self.admit_items([items])
        if refused is not None:
            raise refused
        self.live_log.upsert_items(items)
        return self.apply_items([(items, vectors)])[0]

    def admit_items(
        self, requests: Sequence[Sequence[LiveItem]]
    ) -> list[LiveItemsFullError | None]:
        """Per request, in order: None when its new ids fit under `serve.max_live_items` with
        those of the requests admitted before it, else the error it is answered with."""
        assert self.model is not None
        cap = self.settings.serve.max_live_items
        held = int(self.model.new.sum())
        admitted: set[str] = set()
        out: list[LiveItemsFullError | None] = []
        for items in requests:
            fresh = {
                i.item_id
                for i in items
                if i.item_id not in self.model.position and i.item_id not in admitted
            }
            if fresh and held + len(admitted) + len(fresh) > cap:
                out.append(
                    LiveItemsFullError(
                        f"{held + len(admitted)} items were added since this model was trained "
                        f"and serve.max_live_items is {cap}: {len(fresh)} more cannot be added "
                        "until the next training run"
                    )
                )
                continue
            admitted |= fresh
            out.append(None)
        return out

    def apply_items(
        self, requests: Sequence[tuple[Sequence[LiveItem], np.ndarray]]
    ) -> list[tuple[list[str], list[str]]]:
        """The in-memory half of `upsert_items` for requests the live log already holds: one
        model update for all of them (the last text of an id wins, as in the log), and per
        request the (inserted, updated) ids it would have got alone, in order."""
        assert self.model is not None and self.state is not None
        last: dict[str, tuple[LiveItem, np.ndarray]] = {}
        for items, vectors in requests:
            for item, vector in zip(items, vectors, strict=True):
                # first place, last text: positions as if each request had come alone
                last[item.item_id] = (item, np.asarray(vector, dtype=np.float32))
        answers = []
        known = set()
        for items, _ in requests:
            ids = [i.item_id for i in items]
            seen = [i for i in ids if i in self.model.position or i in known]
            answers.append(([i for i in ids if i not in seen], seen))
            known.update(ids)
        if last:
            rows = [(i.item_id, i.text, i.label) for i, _ in last.values()]
            self.model.upsert_items(rows, np.stack([v for _, v in last.values()]))
            for item, vector in last.values():
                self.state.items[item.item_id] = (item.text, item.label)
                self._inserted[item.item_id] = vector
        return answers

    def add_events(self, events: Sequence[LiveEvent]) -> int:
        """Validate, persist, then apply to each user's history (their session) at once."""
        self.check_events(events)
        return self.apply_events(events, self.persist_events(events))

    def persist_events(self, events: Sequence[LiveEvent]) -> dict[str, list[tuple[str, float]]]:
        """Commit to the live log (worker thread); for users evicted from memory, their whole
        logged history (the new events included), to restore them with."""
        self.live_log.append_events(events)
        return self._evicted_histories({e.user_id for e in events})

    def logged_history(self, user_id: str) -> dict[str, list[tuple[str, float]]]:
        """{user: logged events} when the user was evicted from memory (worker thread)."""
        return self._evicted_histories({user_id})

    def _evicted_histories(self, users: set[str]) -> dict[str, list[tuple[str, float]]]:
        assert self.state is not None
        if not self.state.evicted:  # nobody evicted yet: a user not in memory is new
            return {}
        missing = [u for u in users if u not in self.state.histories]
        found = {u: self.live_log.events_of(u) for u in missing}
        return {u: events for u, events in found.items() if events}

    def check_events(self, events: Sequence[LiveEvent]) -> None:
        assert self.model is not None and self.state is not None
        unknown = sorted({e.item_id for e in events if e.item_id not in self.model.position})
        if unknown:
            raise UnknownItemsError(unknown)

    def apply_events(
        self,
        events: Sequence[LiveEvent],
        restored: dict[str, list[tuple[str, float]]] | None = None,
    ) -> int:
        """The in-memory half of `add_events`, once the log holds them; users in `restored`
        come back whole from the log (which already holds these events)."""
        assert self.state is not None
        restored = restored or {}
        for user, logged in restored.items():
            self.state.restore(user, logged)
        for e in sorted(events, key=lambda e: e.timestamp):
            if e.user_id not in restored:
                self.state.add_event(e.user_id, e.item_id, e.weight)
        return len(events)

    def restore_users(self, restored: dict[str, list[tuple[str, float]]]) -> None:
        assert self.state is not None
        for user, logged in restored.items():
            self.state.restore(user, logged)

    def precomputed(self, user_id: str, k: int) -> pl.DataFrame:
        return self.store.read(user_id, limit=k)

    def item(self, item_id: str) -> dict | None:
        assert self.model is not None
        pos = self.model.position.get(item_id)
        if pos is None:
            return None
        return {
            C.ITEM_ID: item_id,
            C.LABEL: self.model.labels[pos],
            C.TEXT: self.model.texts[pos],
            "new": bool(self.model.new[pos]),
            "tail": bool(self.model.is_tail[pos]),
        }

    def close(self) -> None:
        self.live_log.dispose()
        self.store.dispose()
