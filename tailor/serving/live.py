"""One model version made ready to serve, plus the items added to it since it was trained.

Its faiss index holds each item's model vector next to its language-model text vector, so one
inner-product search scores ``model score + query_weight * cosine(query, item text)``. Items
inserted live get a text vector from the encoder and the model's text-view vector, exactly like
the cold items of the offline protocol, and are searchable at once.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

import faiss
import numpy as np

from tailor import columns as C
from tailor.models.bundle import POPULARITY, Bundle
from tailor.ranking.rank import Ranked, RankPolicy, rank_index, rank_scores
from tailor.ranking.tail import head_mask
from tailor.serving.batching import UserVectorBatcher
from tailor.serving.encoder import NoTextSpaceError, TextVectors, has_text_space
from tailor.serving.profiles import ProfilePool
from tailor.serving.state import LiveState
from tailor.settings import Settings

log = logging.getLogger(__name__)


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
        # Live requests' user vectors, batched across the requests of one event-loop turn.
        self.users = UserVectorBatcher(self.user_vectors, settings.serve.user_batch)

    def retire(self) -> None:
        """Drop what ties this model into reference cycles (its batcher holds its bound
        method): once no request holds it, reference counting frees it at once."""
        self.users = None  # type: ignore[assignment]
        self.profiles = None

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
            # A copy taken at once: the build runs in a worker thread while the loop appends.
            known, _ = self.positions(list(state.histories.get(user, ())))
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

    @property
    def text_vectors(self) -> np.ndarray:
        """Language-model vectors of every position (for query blending and reasons)."""
        return self.text.view

    def policy(self, k: int, strength: float) -> RankPolicy:
        rerank = self.settings.rerank
        return RankPolicy(k, strength, rerank.candidates, self.is_tail)

    def rank(
        self,
        users: np.ndarray,
        queries: np.ndarray | None,
        excluded: Sequence[Collection[int]],
        k: int,
        strength: float,
    ) -> Ranked:
        """Lists from one search over [model | text] vectors (`tailor.ranking.rank`)."""
        if queries is None:
            queries = np.zeros((len(users), self.text_dim), dtype=np.float32)
        vectors = np.hstack([users, queries])
        return rank_index(self.index, vectors, excluded, self.policy(k, strength))

    def rank_dense(
        self, scores: np.ndarray, excluded: Sequence[Collection[int]], k: int, strength: float
    ) -> Ranked:
        """Lists from scores already computed for every position (profile users)."""
        hidden = np.flatnonzero(self.hidden).tolist()
        if hidden:
            excluded = [set(drop) | set(hidden) for drop in excluded]
        return rank_scores(scores, excluded, self.policy(k, strength))

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
