"""The stateful side of `tailor serve`, without HTTP: load, reload, and the operations.

Threading contract (the server keeps it): `load`, `champion_version` and `build` are slow and
run in worker threads; every other method runs on the event loop, one at a time, so the live
model and state are never read while being changed and need no locks.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import torch

from tailor import columns as C
from tailor.data.livelog import LiveEvent, LiveItem, LiveLog
from tailor.models.encoder import encoder_id
from tailor.models.index import set_search_threads
from tailor.serving.encoder import (
    NoTextSpaceError,
    TextVectors,
    check_encoder,
    has_text_space,
)
from tailor.serving.live import LiveModel, build_live_model
from tailor.serving.metrics import ServiceMetrics
from tailor.serving.recommend import LiveQuery, LiveResult, live_sequence, recommend
from tailor.serving.state import LiveState, load_live_state
from tailor.serving.store import RecommendationStore, StoreError
from tailor.settings import EmbedSettings, Settings
from tailor.tracking.registry import load_bundle, resolve_version
from tailor.tracking.runs import client_for

log = logging.getLogger(__name__)


# How far back in time following the live log rereads items, for writers' clocks.
FOLLOW_CLOCK_MARGIN = timedelta(seconds=5)


class LiveItemsFullError(RuntimeError):
    """No room for more live items until the next training run."""


class StoreBusyError(StoreError):
    """The store did not answer within `serve.store_timeout_seconds` (answered 503)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnknownItemsError(ValueError):
    """Item ids the served catalogue does not have; nothing was applied."""

    def __init__(self, items: Sequence[str]) -> None:
        self.items = list(items)
        shown = ", ".join(repr(i) for i in self.items[:20])
        more = f" and {len(self.items) - 20} more" if len(self.items) > 20 else ""
        super().__init__(f"unknown item ids: {shown}{more}")


class UserLocks:
    """One asyncio lock per user id, held only while someone holds or waits for it, so the
    table never grows with the users seen."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def __contains__(self, user: str) -> bool:
        return user in self._locks

    @asynccontextmanager
    async def hold(self, users: Iterable[str]) -> AsyncIterator[None]:
        entries = []
        for user in sorted(set(users)):  # one order for everyone: no deadlock
            entry = self._locks.setdefault(user, (asyncio.Lock(), [0]))
            entry[1][0] += 1
            entries.append((user, entry))
        held = []
        try:
            for _, (lock, _) in entries:
                await lock.acquire()
                held.append(lock)
            yield
        finally:
            for lock in held:
                lock.release()
            for user, (_, waiting) in entries:
                waiting[0] -= 1
                if not waiting[0]:
                    del self._locks[user]


def settle_heap(full: bool = False) -> None:
    """Move everything loaded so far out of the garbage collector's sight.

    torch, transformers, MLflow and the data leave hundreds of thousands of long-lived
    objects; a full collection that walks them all stalls the event loop for a few hundred
    milliseconds, which is what a p99 sees, so after a load they are frozen (never scanned
    again) and a collection walks only what was made since. The collector never frees a frozen
    object either: a swapped-out model is freed by reference counting (`LiveModel.retire`
    breaks its cycles), and `full` (unfreeze, collect everything once, freeze again) is the
    fallback for one that is still alive once the requests on it are done.
    """
    if full:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    release_free_memory()


def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None  # not glibc: its allocator returns memory its own way
    return libc


def limit_malloc_arenas(arenas: int = 2) -> None:
    """At most `arenas` glibc malloc arenas: each thread that allocates (a model built in a
    worker thread, the encoder's thread) otherwise gets one of its own, and memory freed in one
    cannot serve another, so a process that swaps models grows with every swap. Call it before
    the threads start."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, arenas)  # M_ARENA_MAX


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the system (glibc's malloc_trim): a retired
    model's memory then leaves the resident size instead of waiting for reuse."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def collect_if_alive(retired: weakref.ref) -> bool:
    """The fallback of `settle_heap`: a full collection when `retired` is still alive; returns
    whether it is alive after it (then something still refers to it: a leak to report)."""
    if retired() is None:
        return False
    settle_heap(full=True)
    if retired() is not None:
        log.warning("a swapped-out model is still referenced after a full collection")
        return True
    return False


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
        # The service's reads give up after `store_timeout_seconds` in the database itself,
        # so a locked store cannot hold worker threads either.
        self.store = RecommendationStore(
            settings.store_url, timeout_seconds=settings.serve.store_timeout_seconds
        )
        self.state: LiveState | None = None
        self.model: LiveModel | None = None
        self.texts: TextVectors | None = None  # items and profiles (the catalogue's encoder)
        self.queries: TextVectors | None = None  # free-text queries (int8 copy by default)
        self.error: str = "loading"
        self.loaded_at: str | None = None
        # Vectors of items inserted while this process runs, so a reload re-inserts them
        # into the new version without encoding them again; a swap keeps only those the new
        # version still lacks.
        self._inserted: dict[str, np.ndarray] = {}
        # Users being brought back from the live log: requests for one such user take turns,
        # so two restores cannot race and drop one request's events.
        self._restoring = UserLocks()
        self.metrics = ServiceMetrics()
        # Models swapped out, by weak reference: any still alive after the swap's collection
        # is a leak an operator sees on /metrics (tailor_retired_models_alive).
        self._retired: list[weakref.ref] = []
        # This process's name in the live log, and how far it has followed what other
        # processes sharing the log wrote (`follow_log`).
        self.origin = uuid.uuid4().hex[:16]
        self._followed_event = 0
        self._followed_items = datetime.now(UTC)

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
        # Where following the log starts: read before the state, which holds the log's
        # events up to at least here (an event landing in between may be applied twice).
        self._followed_event = self.live_log.last_event_id()
        self._followed_items = datetime.now(UTC)
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
        self.metrics.model_loaded(version, swapped=False)
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
        if model.profiles is None or texts is not self.texts:
            # Built in the worker thread already, unless the profiles' encoder changed.
            model.build_profiles(self.state)
        wanted = {item for item, _, _ in pending}
        self._inserted = {k: v for k, v in self._inserted.items() if k in wanted}
        retired = self.model
        self.model, self.texts, self.queries = model, texts, queries
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.metrics.model_loaded(model.version, swapped=True)
        log.info(
            "now serving model version %s (was %s)",
            model.version,
            None if retired is None else retired.version,
        )
        if retired is not None:
            retired.retire()
            self._retired = [r for r in self._retired if r() is not None]
            self._retired.append(weakref.ref(retired))

    def retired_models(self) -> list[weakref.ref]:
        """Weak references to the models swapped out and not yet freed."""
        self._retired = [r for r in self._retired if r() is not None]
        return list(self._retired)

    # ------------------------------------------------------------ event loop, awaiting I/O

    async def record_events(self, events: Sequence[LiveEvent]) -> int:
        """`add_events` for the event loop: the durable commit in a worker thread, users
        evicted from memory restored under their lock (see `UserLocks`)."""
        self.check_events(events)
        async with self._restoring.hold(self._maybe_evicted(e.user_id for e in events)):
            restored = await asyncio.to_thread(self.persist_events, events)
            return self.apply_events(events, restored)

    async def bring_back(self, user_id: str) -> None:
        """A live user evicted from memory comes back from the log before a request reads
        their history (the read in a worker thread, under the user's lock)."""
        users = self._maybe_evicted([user_id])
        if not users:
            return
        async with self._restoring.hold(users):
            self.restore_users(await asyncio.to_thread(self.logged_history, user_id))

    async def follow_log(self) -> int:
        """Apply what other processes sharing the live log wrote since the last call (items
        first, then events): replicas of one service see each other's writes. Returns the
        events applied."""
        assert self.model is not None and self.state is not None
        # A margin for the writers' clocks (other machines); what was applied already is
        # skipped by its text.
        since = self._followed_items - FOLLOW_CLOCK_MARGIN
        changed = await asyncio.to_thread(self.live_log.items_since, since, self.origin)
        fresh = [
            (item, at) for item, at in changed if self.model.text_of(item.item_id) != item.text
        ]
        if fresh and self.model.text_space and self.texts is not None:
            items = [item for item, _ in fresh]
            vectors = await asyncio.wrap_future(self.texts.submit([i.text for i in items]))
            try:
                [refused] = self.admit_items([items])
                if refused is None:
                    self.apply_items([(items, vectors)])
                else:
                    log.warning("items written by another process not added: %s", refused)
            except NoTextSpaceError:
                pass
        if changed:
            self._followed_items = max(self._followed_items, max(at for _, at in changed))
        rows = await asyncio.to_thread(
            self.live_log.events_after, self._followed_event, self.origin
        )
        applied = 0
        for event_id, user, item, weight in rows:
            self._followed_event = max(self._followed_event, event_id)
            if user not in self.state.histories and (self.state.evicted or user in self._restoring):
                continue  # rebuilt from the log, this event included, when the user returns
            if item not in self.model.position:
                continue
            self.state.add_event(user, item, weight)
            applied += 1
        return applied

    def _maybe_evicted(self, users: Iterable[str]) -> list[str]:
        assert self.state is not None
        if not self.state.evicted:
            return []
        return [u for u in users if u not in self.state.histories]

    async def stored_list(self, user_id: str, k: int) -> pl.DataFrame:
        """The published list, read in a worker thread: a slow or locked store answers
        `StoreBusyError` after `serve.store_timeout_seconds` and the loop never waits."""
        timeout = self.settings.serve.store_timeout_seconds
        try:
            # The database gives up at `timeout`; this bound is the backstop behind it.
            with self.metrics.store_read.time():
                return await asyncio.wait_for(
                    asyncio.to_thread(self.store.read, user_id, k), timeout + 1.0
                )
        except TimeoutError as e:
            raise StoreBusyError(
                f"the store did not answer within {timeout:g} s", math.ceil(timeout)
            ) from e

    def read_gauges(self, metrics: ServiceMetrics) -> None:
        """The gauges Prometheus reads at scrape time (event loop)."""
        if self.texts is not None:
            queued = self.texts.pending
            if self.queries is not None and self.queries is not self.texts:
                queued += self.queries.pending
            metrics.encoder_queue.set(queued)
        if self.state is not None:
            metrics.users_in_memory.set(len(self.state.histories))
            metrics.live_users.set(len(self.state.live_users))
            metrics.evicted.set(self.state.evicted)
        if self.model is not None:
            metrics.live_items.set(int(self.model.new.sum()))
        metrics.retired_alive.set(sum(r() is not None for r in self._retired))

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
        self.live_log.upsert_items(items, origin=self.origin)
        return self.apply_items([(items, vectors)])[0]

    def admit_items(
        self, requests: Sequence[Sequence[LiveItem]]
    ) -> list[LiveItemsFullError | None]:
        """Per request, in order: None when its new ids fit under `serve.max_live_items` with
        those of the requests admitted before it, else the error it is answered with. A
        model that cannot embed text refuses them all before anything is logged."""
        assert self.model is not None
        self.model._need_text_space("new items")
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
        with self.metrics.livelog_commit.time():
            self.live_log.append_events(events, origin=self.origin)
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
