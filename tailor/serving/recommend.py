"""One live request: history, session, query and profile blended into one ranked, explained list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tailor.ranking.explain import POPULAR_REASON, PROFILE_REASON, reasons_for
from tailor.serving.live import LiveModel
from tailor.serving.state import LiveState, profile_text


@dataclass
class Scored:
    item_id: str
    label: str
    score: float
    reason: str
    new: bool  # added after training: scored by its text alone


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


@dataclass
class LiveSequence:
    """What the user encoder reads for a request: the user's history then the session, as
    positions of one model, and the history's liked flags (for reasons)."""

    history: list[int]
    liked: list[bool]
    session: list[int]
    unknown: list[str]  # session ids the model does not know

    @property
    def positions(self) -> list[int]:
        return self.history + self.session


def live_sequence(model: LiveModel, state: LiveState, query: LiveQuery) -> LiveSequence:
    history_ids = state.histories.get(query.user_id, []) if query.user_id else []
    flags = state.liked_of(query.user_id)
    # Items since removed are skipped, with their liked flags.
    known = [
        (model.position[i], ok)
        for i, ok in zip(history_ids, flags, strict=True)
        if i in model.position
    ]
    session, unknown = model.positions(query.session)
    return LiveSequence([p for p, _ in known], [ok for _, ok in known], session, unknown)


def recommend(
    model: LiveModel,
    state: LiveState,
    query: LiveQuery,
    vectors: Mapping[str, np.ndarray],
    user_vector: tuple[list[int], np.ndarray] | None = None,
) -> LiveResult:
    """Rank for one request; `vectors` maps the request's texts to their encoder vectors.

    `user_vector` is (positions, vector) when the caller encoded the sequence already (the
    server's batched encoder); it is used when the positions are still this request's."""
    serve = model.settings.serve
    found = live_sequence(model, state, query)
    history, liked, session, unknown = found.history, found.liked, found.session, found.unknown
    excluded_known, unknown_excluded = model.positions(query.exclude)
    seq = found.positions
    excluded = set(seq) | set(excluded_known)
    basis: list[str] = []
    user = np.zeros((1, model.model_dim), dtype=np.float32)
    profile_label = None
    dense = None  # per-item scores, for a profile (not a vector the index can take)
    if seq:
        if user_vector is not None and user_vector[0] == seq:
            user = np.asarray(user_vector[1], dtype=np.float32).reshape(1, -1)
        else:
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
                dense = dense + query_vec @ model.text_vectors.T
            ranked = model.rank_dense(dense, [excluded], query.k, strength)
        else:
            ranked = model.rank(user, query_vec, [excluded], query.k, strength)
        positions, scores = ranked.row(0)
    fallback = POPULAR_REASON
    if profile_label:
        # Never the profile's values: a response must not echo what is stored about a user.
        fallback = PROFILE_REASON
    reasons = reasons_for(
        model,
        positions,
        history,
        liked,
        session,
        recent=model.max_len,
        query=query.query,
        query_vector=vectors[query.query] if query.query else None,
        fallback=fallback,
    )
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
