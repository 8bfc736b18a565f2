"""The nightly refresh: a model version's lists for every user, published atomically."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.evaluation.plots import plot_long_tail
from tailor.models.bundle import POPULARITY, Bundle
from tailor.ranking.tail import head_mask
from tailor.serving.batch import add_new_items, bundle_policy, compute_recommendations
from tailor.serving.store import BatchInfo, RecommendationStore
from tailor.settings import Settings
from tailor.stages.data import PreparedData, all_interactions, pseudonyms_for
from tailor.tracking.record import Record
from tailor.tracking.registry import load_bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshOutcome:
    batch: BatchInfo
    model_version: str
    summary: dict[str, float]  # users, rows, coverage, tail_share, items_added of the batch
    out_dir: Path  # long-tail plot and a sample of the published lists

    def record(self) -> Record:
        return Record(
            metrics={f"published_{k}": v for k, v in self.summary.items()},
            artifacts=[(self.out_dir, "refresh")],
            tags={"model_version": self.model_version, "batch_id": self.batch.batch_id},
        )


def refresh_recommendations(
    prepared: PreparedData, settings: Settings, model_version: str, out_dir: Path
) -> RefreshOutcome:
    """Top-k for every user from the given model version, published atomically to the store."""
    bundle = load_bundle(settings.tracking_uri, settings.tracking.model_name, model_version)
    added = add_new_items(bundle, pl.read_parquet(prepared.items), settings.cache_dir)
    if added:
        log.info(
            "%d items are newer than model version %s: scored by their text", added, model_version
        )
    profile_users: list[str] = []
    if prepared.users is not None:
        profile_users = pl.read_parquet(prepared.users)[C.USER_ID].to_list()
    recs = compute_recommendations(
        bundle,
        all_interactions(prepared),
        bundle_policy(bundle, settings.refresh.k, settings.rerank, settings.eval.head_share),
        extra_users=profile_users,
        batch_users=settings.refresh.batch_users,
        progress=True,
    )
    summary = summarize_recommendations(
        recs, bundle, settings.eval.head_share, out_dir, show_ids=pseudonyms_for(settings)
    )
    summary["items_added"] = float(added)
    store = RecommendationStore(settings.store_url)
    try:
        info = store.publish(
            recs, model_version=model_version, chunk_rows=settings.refresh.chunk_rows
        )
    finally:
        store.dispose()
    log.info(
        "published %d recommendations for %d users (batch %s, model version %s)",
        info.n_rows,
        info.n_users,
        info.batch_id,
        model_version,
    )
    return RefreshOutcome(info, model_version, summary, Path(out_dir))


def summarize_recommendations(
    recs: pl.DataFrame, bundle: Bundle, head_share: float, out_dir: Path, show_ids=None
) -> dict[str, float]:
    """Coverage and tail share of what was published, plus the long-tail plot and a sample
    (user ids through `show_ids`: pseudonyms unless personal data is opted in)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    popularity = bundle.items[POPULARITY].to_numpy()
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
    sample = recs.filter(pl.col(C.USER_ID).is_in(sample_users.implode()))
    if show_ids is not None:
        shown = pl.Series(C.USER_ID, show_ids(sample[C.USER_ID].to_list()), dtype=pl.Utf8)
        sample = sample.with_columns(shown)
    sample.write_csv(out_dir / "sample_recommendations.csv")
    n = max(len(positions), 1)
    return {
        "users": float(recs[C.USER_ID].n_unique()),
        "rows": float(recs.height),
        "coverage": float((exposure > 0).mean()),
        "tail_share": float(tail[positions].sum() / n),
    }
