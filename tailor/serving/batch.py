"""Recommendations for every user at once (the nightly refresh): user vector -> index search ->
drop seen -> tail-aware re-ranking -> reason, through the same ranking and explanation path
as the live service."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from tailor import columns as C
from tailor.models.bundle import POPULARITY, Bundle
from tailor.models.encoder import EmbeddingCache, LazyEncoder, embed_texts
from tailor.ranking.explain import POPULAR_REASON, reasons_for
from tailor.ranking.rank import RankPolicy, rank_histories
from tailor.ranking.tail import head_mask
from tailor.serving.encoder import has_text_space
from tailor.settings import EmbedSettings, RerankSettings

log = logging.getLogger(__name__)

RECOMMENDATIONS_SCHEMA = {
    C.USER_ID: pl.Utf8,
    C.ITEM_ID: pl.Utf8,
    C.RANK: pl.Int32,
    C.SCORE: pl.Float64,
    C.REASON_TEXT: pl.Utf8,
    C.LABEL: pl.Utf8,
}


def user_histories(
    interactions: pl.DataFrame, bundle: Bundle
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Each user's known items, oldest first, and which were positives (C.POSITIVE; every
    event without that column); items the bundle does not know are skipped."""
    frame = interactions.sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)
    positive = pl.col(C.POSITIVE) if C.POSITIVE in frame.columns else pl.lit(True)
    frame = frame.with_columns(positive.alias(C.POSITIVE))
    grouped = frame.group_by(C.USER_ID, maintain_order=True).agg(
        pl.col(C.ITEM_ID), pl.col(C.POSITIVE)
    )
    ids, histories, liked = grouped[C.USER_ID].to_list(), [], []
    for items, flags in zip(
        grouped[C.ITEM_ID].to_list(), grouped[C.POSITIVE].to_list(), strict=True
    ):
        known = [i in bundle.position for i in items]
        histories.append(bundle.positions(items))
        liked.append(np.asarray([f for f, k in zip(flags, known, strict=True) if k], dtype=bool))
    return ids, histories, liked


def add_new_items(bundle: Bundle, items: pl.DataFrame, cache_dir: Path) -> int:
    """Give the bundle the catalogue's items it was not trained with (added to the source or
    through the service since): embedded with the bundle's own encoder (cached by text) and
    scored by the text view, so tonight's lists can already hold them. Returns how many."""
    new = items.filter(~pl.col(C.ITEM_ID).is_in(pl.Series(bundle.item_ids).implode()))
    if new.is_empty():
        return 0
    if not has_text_space(bundle):
        log.warning("%d new items cannot be embedded (vectors came from a file)", new.height)
        return 0
    embed = EmbedSettings.model_validate(bundle.settings.get("embed", {}))
    encoder = LazyEncoder(embed.model_copy(update={"device": "auto"}))
    cache = EmbeddingCache(Path(cache_dir) / "embeddings", encoder.model_id)
    texts = new[C.TEXT].to_list()
    vectors = embed_texts(texts, encoder, cache, progress=False).vectors
    bundle.add_items(new[C.ITEM_ID].to_list(), texts, new[C.LABEL].to_list(), vectors)
    log.info("added %d items the model was not trained with (scored by their text)", new.height)
    return new.height


def bundle_policy(bundle: Bundle, k: int, rerank: RerankSettings, head_share: float) -> RankPolicy:
    """The ranking policy of a bundle's lists: its own popularity decides head and tail."""
    is_tail = ~head_mask(bundle.items[POPULARITY].to_numpy(), head_share)
    # Items added after training have no events: tail by definition.
    is_tail[bundle.new] = True
    return RankPolicy(k, rerank.strength, rerank.candidates, is_tail)


def compute_recommendations(
    bundle: Bundle,
    interactions: pl.DataFrame,
    policy: RankPolicy,
    extra_users: Sequence[str] = (),
    batch_users: int = 1024,
    progress: bool = False,
) -> pl.DataFrame:
    """Top-k unseen items per user with score, rank, label and reason.

    Users with no known history (only a profile, or only unknown items) get the most popular
    items, and the reason says so.
    """
    users, histories, liked = user_histories(interactions, bundle)
    known = set(users)
    for user in extra_users:
        if user not in known:
            users.append(user)
            histories.append(np.zeros(0, dtype=np.int64))
            liked.append(np.zeros(0, dtype=bool))
    popular = np.argsort(-bundle.items[POPULARITY].to_numpy(), kind="stable")[: policy.k]
    recent = bundle.model.config.max_len

    columns: dict[str, list] = {name: [] for name in RECOMMENDATIONS_SCHEMA}
    starts = range(0, len(users), batch_users)
    for start in tqdm(starts, desc="refresh", unit="batch", disable=not progress):
        chunk_users = users[start : start + batch_users]
        chunk_hist = histories[start : start + batch_users]
        chunk_liked = liked[start : start + batch_users]
        with_history = [i for i, h in enumerate(chunk_hist) if len(h)]
        ranked = rank_histories(
            bundle.model, bundle.index, [chunk_hist[i] for i in with_history], policy
        )
        rows = dict(zip(with_history, range(len(with_history)), strict=True))
        for i, user in enumerate(chunk_users):
            history = chunk_hist[i]
            if i in rows:
                items, scores = ranked.row(rows[i])
                reasons = reasons_for(bundle, items, history, chunk_liked[i], recent=recent)
            else:
                items, scores = popular.tolist(), [0.0] * len(popular)
                reasons = [POPULAR_REASON] * len(items)
            columns[C.USER_ID].extend([user] * len(items))
            columns[C.ITEM_ID].extend(bundle.item_ids[j] for j in items)
            columns[C.RANK].extend(range(1, len(items) + 1))
            columns[C.SCORE].extend(scores)
            columns[C.REASON_TEXT].extend(reasons)
            columns[C.LABEL].extend(bundle.labels[j] for j in items)
    frame = pl.DataFrame(columns, schema=RECOMMENDATIONS_SCHEMA)
    log.info("computed %d recommendations for %d users", frame.height, len(users))
    return frame
