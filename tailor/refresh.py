"""Recommendations for every user: user vector -> index search -> drop seen -> reason."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from tailor import columns as C
from tailor.bundle import Bundle

log = logging.getLogger(__name__)

POPULAR_REASON = "popular with everyone"


def user_histories(
    interactions: pl.DataFrame, bundle: Bundle, users: Sequence[str] | None = None
) -> tuple[list[str], list[np.ndarray]]:
    """Each user's known items, oldest first; items the bundle does not know are skipped."""
    frame = interactions.sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)
    grouped = frame.group_by(C.USER_ID, maintain_order=True).agg(pl.col(C.ITEM_ID))
    by_user = dict(zip(grouped[C.USER_ID].to_list(), grouped[C.ITEM_ID].to_list(), strict=True))
    ids = list(by_user) if users is None else list(users)
    histories = [bundle.positions(by_user.get(user, [])) for user in ids]
    return ids, histories


def add_new_items(bundle: Bundle, items: pl.DataFrame, cache_dir) -> int:
    """Give the bundle the catalogue's items it was not trained with (added to the source or
    through the service since): embedded with the bundle's own encoder (cached by text) and
    scored by the text view, so tonight's lists can already hold them. Returns how many."""
    from pathlib import Path

    from tailor.embed import EmbeddingCache, LazyEncoder, embed_texts
    from tailor.live import has_text_space
    from tailor.settings import EmbedSettings

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


def compute_recommendations(
    bundle: Bundle,
    interactions: pl.DataFrame,
    k: int,
    strength: float = 0.0,
    head_share: float = 0.2,
    candidates: int = 200,
    extra_users: Sequence[str] = (),
    batch_users: int = 1024,
    progress: bool = False,
) -> pl.DataFrame:
    """Top-k unseen items per user with score, rank, label and reason.

    Users with no known history (only a profile, or only unknown items) get the most popular
    items, and the reason says so.
    """
    users, histories = user_histories(interactions, bundle)
    known = set(users)
    for user in extra_users:
        if user not in known:
            users.append(user)
            histories.append(np.zeros(0, dtype=np.int64))
    popular = np.argsort(-bundle.items["popularity"].to_numpy(), kind="stable")

    out_users, out_items, out_labels, out_ranks, out_scores, out_reasons = [], [], [], [], [], []
    starts = range(0, len(users), batch_users)
    for start in tqdm(starts, desc="refresh", unit="batch", disable=not progress):
        chunk_users = users[start : start + batch_users]
        chunk_hist = histories[start : start + batch_users]
        with_history = [i for i, h in enumerate(chunk_hist) if len(h)]
        recs = bundle.recommend(
            [chunk_hist[i] for i in with_history],
            k,
            strength=strength,
            candidates=candidates,
            head_share=head_share,
        )
        rows = dict(zip(with_history, range(len(with_history)), strict=True))
        for i, user in enumerate(chunk_users):
            if i in rows:
                items = recs.items[rows[i]]
                scores = recs.scores[rows[i]]
                keep = items >= 0
                items, scores = items[keep], scores[keep]
                reasons = bundle.explain(chunk_hist[i], items)
            else:
                items = popular[:k]
                scores = np.zeros(len(items), dtype=np.float32)
                reasons = [POPULAR_REASON] * len(items)
            out_users.extend([user] * len(items))
            out_items.extend(bundle.item_ids[j] for j in items)
            out_labels.extend(bundle.labels[j] for j in items)
            out_ranks.extend(range(1, len(items) + 1))
            out_scores.extend(scores.tolist())
            out_reasons.extend(reasons)
    frame = pl.DataFrame(
        {
            C.USER_ID: out_users,
            C.ITEM_ID: out_items,
            C.RANK: out_ranks,
            C.SCORE: out_scores,
            C.REASON_TEXT: out_reasons,
            C.LABEL: out_labels,
        },
        schema={
            C.USER_ID: pl.Utf8,
            C.ITEM_ID: pl.Utf8,
            C.RANK: pl.Int32,
            C.SCORE: pl.Float64,
            C.REASON_TEXT: pl.Utf8,
            C.LABEL: pl.Utf8,
        },
    )
    log.info("computed %d recommendations for %d users", frame.height, len(users))
    return frame


def summarize_recommendations(
    recs: pl.DataFrame, bundle: Bundle, head_share: float, out_dir
) -> dict[str, float]:
    """Coverage and tail share of what was published, plus the long-tail plot and a sample."""
    from pathlib import Path

    from tailor.evaluate import head_mask
    from tailor.plots import plot_long_tail

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    popularity = bundle.items["popularity"].to_numpy()
    positions = np.array([bundle.position[i] for i in recs[C.ITEM_ID].to_list()], dtype=np.int64)
    exposure = np.bincount(positions, minlength=bundle.n_items)
    tail = ~head_mask(popularity, head_share)
    plot_long_tail(
        popularity,
        {"published": exposure},
        out_dir / "long_tail.png",
        head_share=head_share,
        title="Train popularity and exposure in the published recommendations",
    )
    sample_users = recs[C.USER_ID].unique(maintain_order=True).head(25)
    recs.filter(pl.col(C.USER_ID).is_in(sample_users.implode())).write_csv(
        out_dir / "sample_recommendations.csv"
    )
    n = max(len(positions), 1)
    return {
        "users": float(recs[C.USER_ID].n_unique()),
        "rows": float(recs.height),
        "coverage": float((exposure > 0).mean()),
        "tail_share": float(tail[positions].sum() / n),
    }
