"""Real-time recommendations over one model version: sessions, queries, profiles, new items.

The nightly refresh serves yesterday's tastes; this module serves today's. Its parts:

- `LiveState`: what is known about users and items, independent of any model version: each
  user's history (clean data plus feedback received since), profiles, and the catalogue texts.
- `LiveModel`: one bundle made ready to serve. Its faiss index holds each item's model vector
  next to its language-model text vector, so one inner-product search scores
  ``model score + query_weight * cosine(query, item text)``. Items inserted live get a text
  vector from the encoder and the model's text-view vector, exactly like the cold items of the
  offline protocol, and are searchable at once.
- `ProfilePool`: a new user with only a profile borrows the mean user vector of the known users
  whose profile text reads most like theirs.

Everything here is plain and synchronous; `tailor.server` puts HTTP in front of it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.bundle import POPULARITY, Bundle
from tailor.settings import EmbedSettings, Settings

log = logging.getLogger(__name__)

POPULAR_REASON = "popular with everyone"


# ---------------------------------------------------------------- text vectors


class TextVectors:
    """The bundle's encoder for short texts (queries, profiles, new items), with an LRU cache
    and micro-batching.

    Requests that arrive while the encoder is busy are encoded together in its next pass: on a
    CPU one short text costs ~11 ms and eight cost ~25 ms, so under load batching multiplies
    what one core sustains instead of letting a queue grow. Thread-safe; one worker thread
    (started on first use) owns the model.
    """

    def __init__(
        self,
        embed: EmbedSettings,
        cache_size: int = 10_000,
        max_batch: int = 32,
        int8: bool = False,
        backend: str = "torch",
        cache_dir: Path | None = None,
        threads: int = 1,
    ) -> None:
        from tailor.embed import OnnxEncoder, TransformerEncoder, encoder_id, pick_device

        self.embed = embed
        self.model_id = encoder_id(embed)
        self.int8 = int8
        self.backend = "torch"
        self.encoder = None
        on_cpu = pick_device(embed.device) == "cpu"
        if backend == "onnx" and on_cpu and cache_dir is not None:
            try:
                self.encoder = OnnxEncoder(embed, cache_dir, int8=int8, threads=threads)
                self.backend = "onnx"
            except Exception as e:  # an encoder ONNX cannot take still serves, just slower
                log.warning("ONNX Runtime unavailable for %s (%s); using PyTorch", self.model_id, e)
        if self.encoder is None:
            self.encoder = TransformerEncoder(embed)
            self.int8 = int8 and on_cpu
            if self.int8:
                self._quantize()
        self.dim = self.encoder.dim
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[tuple[list[str], Future]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def _quantize(self) -> None:
        """int8 weights for the linear layers (CPU only): ~2.4x faster short texts."""
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            self.encoder.model = torch.ao.quantization.quantize_dynamic(
                self.encoder.model, {torch.nn.Linear}, dtype=torch.qint8
            )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.submit(texts).result()

    def submit(self, texts: Sequence[str]) -> Future:
        """A future of the (len(texts), dim) vectors; cache hits resolve at once."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for row, text in enumerate(texts):
                hit = self._cache.get(text)
                if hit is None:
                    missing.setdefault(text, []).append(row)
                else:
                    self._cache.move_to_end(text)
                    out[row] = hit
            if missing and self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name="tailor-encoder", daemon=True
                )
                self._worker.start()
        done: Future = Future()
        if not missing:
            done.set_result(out)
            return done
        todo = list(missing)
        job: Future = Future()

        def fill(finished: Future) -> None:
            error = finished.exception()
            if error is not None:
                done.set_exception(error)
                return
            for text, vector in zip(todo, finished.result(), strict=True):
                out[missing[text]] = vector
            done.set_result(out)

        job.add_done_callback(fill)
        self._jobs.put((todo, job))
        return done

    def _run(self) -> None:
        while True:
            batch = [self._jobs.get()]
            size = len(batch[0][0])
            while size < self._max_batch:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
                size += len(batch[-1][0])
            unique = list(dict.fromkeys(t for texts, _ in batch for t in texts))
            try:
                vectors = self.encoder.encode(unique)
            except Exception as e:  # every waiting request gets the error, none hangs
                for _, job in batch:
                    job.set_exception(e)
                continue
            row = {t: i for i, t in enumerate(unique)}
            with self._lock:
                if self._size:
                    for text, vector in zip(unique, vectors, strict=True):
                        self._cache[text] = vector
                        self._cache.move_to_end(text)
                    while len(self._cache) > self._size:
                        self._cache.popitem(last=False)
            for texts, job in batch:
                job.set_result(vectors[[row[t] for t in texts]])


class NoTextSpaceError(ValueError):
    """The bundle's item vectors came from a file: there is no encoder for text requests."""


def has_text_space(bundle: Bundle) -> bool:
    """False when item vectors were supplied (data.item_vectors_path) rather than embedded:
    queries and new items cannot be put into that space."""
    return not (bundle.settings.get("data") or {}).get("item_vectors_path")


def check_encoder(texts: TextVectors, bundle: Bundle, tolerance: float = 0.99) -> None:
    """Refuse to serve when the encoder does not reproduce the bundle's text vectors: queries
    and new items would land in a different space from the catalogue."""
    if bundle.n_items == 0:
        return
    probe = bundle.items[C.TEXT][0]
    cos = float(texts.encode([probe])[0] @ bundle.text_vectors[0])
    if cos < tolerance:
        raise RuntimeError(
            f"encoder {texts.model_id} gives cosine {cos:.3f} with the bundle's vector for item "
            f"{bundle.item_ids[0]!r}; the bundle was embedded with another encoder (its "
            "settings.json names the one to use)"
        )


def profile_text(profile: Mapping[str, object], fields: Sequence[str]) -> str:
    """'age: 24; gender: M; occupation: technician' over the configured fields that are set."""
    parts = []
    for name in fields:
        value = profile.get(name)
        if value is not None and str(value).strip():
            parts.append(f"{name}: {str(value).strip()}")
    return "; ".join(parts)


# ---------------------------------------------------------------- state


@dataclass
class LiveState:
    """Users and items as of the latest data plus everything received live since."""

    histories: dict[str, list[str]]  # user -> item ids, oldest first
    profiles: dict[str, dict[str, str]]  # user -> profile fields
    items: dict[str, tuple[str, str]]  # item id -> (text, label): the catalogue to serve
    profile_users: list[str] = field(default_factory=list)  # rows of `profile_vectors`
    profile_vectors: np.ndarray | None = None  # language-model vectors of their profile texts

    @classmethod
    def from_frames(
        cls,
        interactions: pl.DataFrame,
        items: pl.DataFrame,
        users: pl.DataFrame | None,
        profile_fields: Sequence[str],
    ) -> LiveState:
        ordered = interactions.sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)
        grouped = ordered.group_by(C.USER_ID, maintain_order=True).agg(pl.col(C.ITEM_ID))
        histories = dict(
            zip(grouped[C.USER_ID].to_list(), grouped[C.ITEM_ID].to_list(), strict=True)
        )
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
        return cls(histories=histories, profiles=profiles, items=catalogue)

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
        """A copy a worker thread can read while the event loop keeps appending."""
        return LiveState(
            histories={u: list(h) for u, h in self.histories.items()},
            profiles=self.profiles,
            items=dict(self.items),
            profile_users=self.profile_users,
            profile_vectors=self.profile_vectors,
        )


def load_live_state(settings: Settings) -> LiveState:
    """Clean data of the configured source plus the live log, as the nightly run sees it."""
    from tailor.pipeline import clean_sources

    clean = clean_sources(settings)
    return LiveState.from_frames(
        clean.interactions, clean.items, clean.users, settings.serve.profile_fields
    )


# ---------------------------------------------------------------- profiles


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


# ---------------------------------------------------------------- the model


@dataclass
class Scored:
    item_id: str
    label: str
    score: float
    reason: str
    new: bool  # added after training: scored by its text alone


class _Rows:
    """A float32 matrix that grows by whole rows with amortised O(1) appends."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = np.array(data, dtype=np.float32)
        self.n = len(self._data)

    def append(self, rows: np.ndarray) -> None:
        need = self.n + len(rows)
        if need > len(self._data):
            grown = np.zeros((max(need, 2 * len(self._data)), self._data.shape[1]), np.float32)
            grown[: self.n] = self._data[: self.n]
            self._data = grown
        self._data[self.n : need] = rows
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self._data[: self.n]


class LiveModel:
    """One bundle ready to serve, plus the items added to it since it was trained."""

    def __init__(
        self,
        bundle: Bundle,
        version: str,
        settings: Settings,
        hidden: Collection[str] = (),
    ) -> None:
        import faiss

        from tailor.evaluate import head_mask

        self.bundle = bundle
        self.version = version
        self.settings = settings
        self.model = bundle.model
        self.model.freeze()
        self.max_len = self.model.config.max_len
        self.item_ids: list[str] = list(bundle.item_ids)
        self.labels: list[str] = list(bundle.labels)
        self.texts: list[str] = bundle.items[C.TEXT].to_list()
        hidden = set(hidden)
        # `hidden` items are left out as if the bundle never had them (evaluation only).
        self.position = {i: p for p, i in enumerate(self.item_ids) if i not in hidden}
        popularity = bundle.items[POPULARITY].to_numpy()
        self.is_tail = ~head_mask(popularity, settings.eval.head_share)
        self.new = np.zeros(len(self.item_ids), dtype=bool)
        self.text = _Rows(bundle.text_vectors)
        visible = np.array(sorted(self.position.values()), dtype=np.int64)
        self.hidden = np.ones(len(self.item_ids), dtype=bool)  # positions never served
        self.hidden[visible] = False
        shown = set(visible.tolist())
        self.popular = [int(p) for p in np.argsort(-popularity, kind="stable") if p in shown]
        self.model_dim = self.model.vector_dim
        self.text_dim = bundle.text_vectors.shape[1]
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.model_dim + self.text_dim))
        if len(visible):
            rows = np.hstack([self.model.item_vectors(visible), bundle.text_vectors[visible]])
            self.index.add_with_ids(np.ascontiguousarray(rows, dtype=np.float32), visible)
        self.profiles: ProfilePool | None = None
        self.text_space = has_text_space(bundle)

    def _need_text_space(self, what: str) -> None:
        if not self.text_space:
            raise NoTextSpaceError(
                f"{what} need the encoder that made the item vectors, and this model's came "
                "from a file (data.item_vectors_path)"
            )

    @property
    def n_items(self) -> int:
        return len(self.position)

    # ------------------------------------------------------------ items

    def upsert_items(
        self, items: Sequence[tuple[str, str, str]], text_vectors: np.ndarray
    ) -> tuple[list[str], list[str]]:
        """(id, text, label) rows with their encoder vectors; returns (inserted, updated) ids.

        New items go into the index at once, scored by the text view; known items keep what
        training learned about them (their id embedding) and get the new text's vector.
        """
        self._need_text_space("new or changed item texts")
        text_vectors = np.asarray(text_vectors, dtype=np.float32)
        fresh = [r for r, (item, _, _) in enumerate(items) if item not in self.position]
        known = [r for r, (item, _, _) in enumerate(items) if item in self.position]
        if fresh:
            vectors = text_vectors[fresh]
            positions = self.model.add_items(vectors)
            for row, pos in zip(fresh, positions, strict=True):
                item, text, label = items[row]
                self.item_ids.append(item)
                self.labels.append(label)
                self.texts.append(text)
                self.position[item] = int(pos)
            self.new = np.concatenate([self.new, np.ones(len(fresh), dtype=bool)])
            # No events yet: tail by definition.
            self.is_tail = np.concatenate([self.is_tail, np.ones(len(fresh), dtype=bool)])
            self.hidden = np.concatenate([self.hidden, np.zeros(len(fresh), dtype=bool)])
            self.text.append(vectors)
            self._index_rows(positions)
        if known:
            positions = np.array([self.position[items[r][0]] for r in known], dtype=np.int64)
            self.model.update_item_texts(positions, text_vectors[known])
            for row, pos in zip(known, positions, strict=True):
                _, self.texts[pos], self.labels[pos] = items[row]
                self.text.view[pos] = text_vectors[row]
            self.index.remove_ids(positions)
            self._index_rows(positions)
        return [items[r][0] for r in fresh], [items[r][0] for r in known]

    def _index_rows(self, positions: np.ndarray) -> None:
        rows = np.hstack([self.model.item_vectors(positions), self.text.view[positions]])
        self.index.add_with_ids(np.ascontiguousarray(rows, dtype=np.float32), positions)

    def pending_items(self, catalogue: Mapping[str, tuple[str, str]]) -> list[tuple[str, str, str]]:
        """(id, text, label) of catalogue items this model lacks or reads differently."""
        return [
            (item, text, label)
            for item, (text, label) in catalogue.items()
            if self.text_of(item) != text
        ]

    def text_of(self, item_id: str) -> str | None:
        pos = self.position.get(item_id)
        return None if pos is None else self.texts[pos]

    # ------------------------------------------------------------ users

    def positions(self, item_ids: Sequence[str]) -> tuple[list[int], list[str]]:
        """Known positions in order, and the ids this model does not know."""
        known, unknown = [], []
        for item in item_ids:
            pos = self.position.get(item)
            if pos is None:
                unknown.append(item)
            else:
                known.append(pos)
        return known, unknown

    def user_vectors(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        tails = [np.asarray(h[-self.max_len :], dtype=np.int64) for h in histories]
        return self.model.user_vectors(tails)

    def build_profiles(self, state: LiveState) -> None:
        """The profile pool of this model: known users with both a profile and a history."""
        self.profiles = None
        if state.profile_vectors is None:
            return
        rows, histories = [], []
        for row, user in enumerate(state.profile_users):
            known, _ = self.positions(state.histories.get(user, []))
            if known:
                rows.append(row)
                histories.append(known)
        if rows:
            serve = self.settings.serve
            self.profiles = ProfilePool(
                [state.profile_users[r] for r in rows],
                state.profile_vectors[rows],
                histories,
                len(self.item_ids),
                serve.profile_neighbours,
                serve.profile_prior,
            )

    # ------------------------------------------------------------ ranking

    def search(
        self,
        users: np.ndarray,
        queries: np.ndarray | None,
        excluded: Sequence[Collection[int]],
        k: int,
        strength: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k positions and scores per row: one search over [model | text] vectors, the
        excluded positions removed, then the tail-aware re-ranking at `strength`."""
        from tailor.rerank import rerank_tail_scored

        n = len(users)
        if queries is None:
            queries = np.zeros((n, self.text_dim), dtype=np.float32)
        vectors = np.ascontiguousarray(np.hstack([users, queries]), dtype=np.float32)
        candidates = self.settings.rerank.candidates
        pool = max(k, candidates) if strength > 0 else k
        longest = max((len(e) for e in excluded), default=0)
        fetch = min(self.index.ntotal, pool + longest)
        if fetch == 0:
            return np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
        scores, found = self.index.search(vectors, fetch)
        cand = np.full((n, pool), -1, dtype=np.int64)
        cand_scores = np.full((n, pool), -np.inf, dtype=np.float32)
        for row in range(n):
            drop = excluded[row]
            col = 0
            for item, score in zip(found[row], scores[row], strict=True):
                if item < 0 or item in drop:
                    continue
                cand[row, col], cand_scores[row, col] = item, score
                col += 1
                if col == pool:
                    break
        if strength <= 0:
            return cand[:, :k], cand_scores[:, :k]
        return rerank_tail_scored(cand, cand_scores, self.is_tail, strength, k)

    def rank_scores(
        self, scores: np.ndarray, excluded: Sequence[Collection[int]], k: int, strength: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like `search`, for scores already computed for every position (profile users)."""
        from tailor.rerank import rerank_tail

        scores = np.array(scores, dtype=np.float32)
        scores[:, self.hidden] = -np.inf
        for row, drop in enumerate(excluded):
            if drop:
                scores[row, list(drop)] = -np.inf
        pool = min(max(k, self.settings.rerank.candidates) if strength > 0 else k, scores.shape[1])
        top = np.argpartition(-scores, pool - 1, axis=1)[:, :pool]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        cand = np.take_along_axis(top, order, axis=1).astype(np.int64)
        cand_scores = np.take_along_axis(top_scores, order, axis=1)
        cand[~np.isfinite(cand_scores)] = -1
        if strength > 0:
            chosen = rerank_tail(cand, cand_scores, self.is_tail, strength, k)
        else:
            chosen = cand[:, :k]
        chosen_scores = np.where(
            chosen >= 0, scores[np.arange(len(scores))[:, None], chosen.clip(min=0)], -np.inf
        )
        if chosen.shape[1] < k:
            pad = k - chosen.shape[1]
            chosen = np.pad(chosen, ((0, 0), (0, pad)), constant_values=-1)
            chosen_scores = np.pad(chosen_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return chosen, chosen_scores.astype(np.float32)

    def profile_scores(
        self, profile_vectors: np.ndarray, exclude: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """Log of the blended consumption share: on the model's log-probability scale."""
        assert self.profiles is not None
        shares = self.profiles.shares(profile_vectors, len(self.item_ids), exclude)
        return np.log(shares + 1e-6).astype(np.float32)

    def popular_items(self, excluded: Collection[int], k: int) -> list[int]:
        out = []
        for pos in self.popular:
            if pos not in excluded:
                out.append(pos)
                if len(out) == k:
                    break
        return out


# ---------------------------------------------------------------- requests


@dataclass
class LiveQuery:
    """One live request, in plain types (the HTTP layer validates and converts)."""

    user_id: str | None = None
    session: list[str] = field(default_factory=list)
    query: str | None = None
    profile: dict[str, str] | None = None
    exclude: list[str] = field(default_factory=list)
    k: int = 20
    strength: float | None = None  # None = the served default (`rerank.strength`)
    query_weight: float | None = None  # None = `serve.query_weight`

    def profile_string(self, state: LiveState, fields: Sequence[str]) -> str:
        """The profile text this request is ranked by ('' when history or session decide)."""
        profile = self.effective_profile(state)
        if not profile or self.has_history(state):
            return ""
        return profile_text(profile, fields)

    def effective_profile(self, state: LiveState) -> dict[str, str] | None:
        if self.profile:
            return self.profile
        return state.profiles.get(self.user_id) if self.user_id else None

    def has_history(self, state: LiveState) -> bool:
        return bool(self.session) or bool(self.user_id and state.histories.get(self.user_id))


@dataclass
class LiveResult:
    model_version: str
    items: list[Scored]
    basis: list[str]  # what the ranking used: history, session, profile, query, popularity
    unknown_items: list[str]  # ids in session or exclude that the catalogue does not have


def recommend(
    model: LiveModel, state: LiveState, query: LiveQuery, vectors: Mapping[str, np.ndarray]
) -> LiveResult:
    """Rank for one request; `vectors` maps the request's texts to their encoder vectors."""
    serve = model.settings.serve
    history_ids = state.histories.get(query.user_id, []) if query.user_id else []
    history, _ = model.positions(history_ids)  # items since removed are skipped
    session, unknown = model.positions(query.session)
    excluded_known, unknown_excluded = model.positions(query.exclude)
    seq = history + session
    excluded = set(seq) | set(excluded_known)
    basis: list[str] = []
    user = np.zeros((1, model.model_dim), dtype=np.float32)
    profile_label = None
    dense = None  # per-item scores, for a profile (not a vector the index can take)
    if seq:
        user = model.user_vectors([seq])
        basis += (["history"] if history else []) + (["session"] if session else [])
    else:
        profile = query.effective_profile(state)
        text = profile_text(profile, serve.profile_fields) if profile else ""
        if text and model.profiles is not None:
            dense = model.profile_scores(vectors[text][None, :])
            basis.append("profile")
            profile_label = text
    query_vec = None
    if query.query:
        model._need_text_space("text queries")
        weight = serve.query_weight if query.query_weight is None else query.query_weight
        query_vec = vectors[query.query][None, :] * weight
        basis.append("query")
    strength = model.settings.rerank.strength if query.strength is None else query.strength
    if not basis:
        positions = model.popular_items(excluded, query.k)
        scores = [0.0] * len(positions)
        basis.append("popularity")
    else:
        if dense is not None:
            if query_vec is not None:
                dense = dense + query_vec @ model.text.view.T
            found, found_scores = model.rank_scores(dense, [excluded], query.k, strength)
        else:
            found, found_scores = model.search(user, query_vec, [excluded], query.k, strength)
        keep = found[0] >= 0
        positions = found[0][keep].tolist()
        scores = found_scores[0][keep].tolist()
    reasons = explain(model, positions, history, session, query.query, vectors, profile_label)
    items = [
        Scored(
            item_id=model.item_ids[p],
            label=model.labels[p],
            score=float(s),
            reason=r,
            new=bool(model.new[p]),
        )
        for p, s, r in zip(positions, scores, reasons, strict=True)
    ]
    return LiveResult(model.version, items, basis, unknown + unknown_excluded)


def explain(
    model: LiveModel,
    positions: Sequence[int],
    history: Sequence[int],
    session: Sequence[int],
    query: str | None,
    vectors: Mapping[str, np.ndarray],
    profile_label: str | None,
) -> list[str]:
    """A reason per item: the history or session item, or the query, its text reads most like."""
    if not positions:
        return []
    rec_text = model.text.view[np.asarray(positions)]
    recent = (list(history) + list(session))[-model.max_len :]
    n_history = max(0, len(recent) - len(session))
    best_sim = np.full(len(positions), -np.inf)
    best_item = np.full(len(positions), -1)
    if recent:
        sims = rec_text @ model.text.view[np.asarray(recent)].T
        arg = sims.argmax(axis=1)
        best_sim, best_item = sims[np.arange(len(positions)), arg], arg
    query_sim = rec_text @ vectors[query] if query else None
    reasons = []
    for row, pos in enumerate(positions):
        if query_sim is not None and query_sim[row] >= best_sim[row]:
            reason = f"matches your search “{query}”"
        elif best_item[row] >= 0:
            label = model.labels[recent[best_item[row]]]
            verb = "viewed" if best_item[row] >= n_history else "liked"
            reason = f"because you {'just ' if verb == 'viewed' else ''}{verb} {label}"
        elif profile_label:
            reason = f"liked by people like you ({profile_label})"
        else:
            reason = POPULAR_REASON
        if model.new[pos]:
            reason = f"new: {reason}"
        reasons.append(reason)
    return reasons


def build_live_model(
    bundle: Bundle,
    version: str,
    settings: Settings,
    state: LiveState,
    texts: TextVectors,
) -> LiveModel:
    """A bundle made ready to serve the state's catalogue: items the bundle lacks or reads
    differently (inserted live, or added to the source since training) are embedded and
    upserted, and the profile pool is built with this model's user vectors."""
    model = LiveModel(bundle, version, settings)
    pending = model.pending_items(state.items)
    if pending and not model.text_space:
        log.warning("%d items differ from the bundle but cannot be embedded", len(pending))
    elif pending:
        vectors = texts.encode([text for _, text, _ in pending])
        inserted, updated = model.upsert_items(pending, vectors)
        log.info(
            "version %s: %d items added and %d updated since it was trained",
            version,
            len(inserted),
            len(updated),
        )
    model.build_profiles(state)
    return model
