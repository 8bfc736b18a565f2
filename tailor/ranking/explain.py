"""The one explanation path: a short reason per recommended item.

A reason names what the item's text reads most like among what the user showed interest in:
an item they liked (a positive event of their history), an item they just viewed (this
session), or their search query. Items added after the model was trained say so ("new: ...").
The nightly refresh and the live service both explain through `explain`, so a list reads the
same whichever made it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POPULAR_REASON = "popular with everyone"
PROFILE_REASON = "liked by people with a profile like yours"
HISTORY_REASON = "based on what you have seen"
NEW_PREFIX = "new: "


@dataclass(frozen=True)
class Evidence:
    """What a user's list may be explained by: text vectors and the phrase for each."""

    vectors: np.ndarray  # (m, d) L2-normalised language-model vectors
    phrases: list[str]  # "because you liked X", "because you just viewed X"

    @classmethod
    def none(cls, dim: int) -> Evidence:
        return cls(np.zeros((0, dim), dtype=np.float32), [])


def gather_evidence(
    history: Sequence[int],
    liked: Sequence[bool],
    session: Sequence[int],
    text_vectors: np.ndarray,
    labels: Sequence[str],
    recent: int,
) -> Evidence:
    """Evidence from the `recent` last events of history + session.

    History events that are not positives (`liked[i]` False: a low rating, say) are input to
    the model but never cited as something the user liked.
    """
    sequence = [(int(p), "liked" if ok else None) for p, ok in zip(history, liked, strict=True)]
    sequence += [(int(p), "just viewed") for p in session]
    events = [(p, kind) for p, kind in sequence[-recent:] if kind is not None]
    if not events:
        return Evidence.none(text_vectors.shape[1])
    positions = np.array([p for p, _ in events], dtype=np.int64)
    phrases = [f"because you {kind} {labels[p]}" for p, kind in events]
    return Evidence(text_vectors[positions], phrases)


def explain(
    item_vectors: np.ndarray,
    evidence: Evidence,
    new: Sequence[bool] | None = None,
    query: str | None = None,
    query_vector: np.ndarray | None = None,
    fallback: str = POPULAR_REASON,
) -> list[str]:
    """A reason per row of `item_vectors` (the recommended items' text vectors).

    The query wins where the item reads more like it than like any evidence item; without
    evidence or query the reason is `fallback` (popularity, a profile, the history as a whole).
    """
    n = len(item_vectors)
    best_sim = np.full(n, -np.inf)
    best = np.full(n, -1)
    if len(evidence.phrases) and n:
        sims = item_vectors @ evidence.vectors.T
        best = sims.argmax(axis=1)
        best_sim = sims[np.arange(n), best]
    query_sim = item_vectors @ query_vector if query and query_vector is not None else None
    reasons = []
    for row in range(n):
        if query_sim is not None and query_sim[row] >= best_sim[row]:
            reason = f"matches your search “{query}”"
        elif best[row] >= 0:
            reason = evidence.phrases[best[row]]
        else:
            reason = fallback
        if new is not None and new[row]:
            reason = NEW_PREFIX + reason
        reasons.append(reason)
    return reasons


def reasons_for(
    catalogue,
    items: Sequence[int],
    history: Sequence[int],
    liked: Sequence[bool],
    session: Sequence[int] = (),
    recent: int = 50,
    query: str | None = None,
    query_vector: np.ndarray | None = None,
    fallback: str | None = None,
) -> list[str]:
    """Reasons for one user's list over a catalogue with `text_vectors`, `labels` and `new`
    (a model bundle, a live model): the explanation of the nightly lists and the service."""
    if not len(items):
        return []
    evidence = gather_evidence(
        history, liked, session, catalogue.text_vectors, catalogue.labels, recent
    )
    if fallback is None:
        fallback = HISTORY_REASON if len(history) else POPULAR_REASON
    positions = np.asarray(items, dtype=np.int64)
    return explain(
        catalogue.text_vectors[positions],
        evidence,
        new=catalogue.new[positions],
        query=query,
        query_vector=query_vector,
        fallback=fallback,
    )
