from dataclasses import dataclass
from pathlib import Path

import polars as pl
from prefect import get_run_logger

from tailor.pipeline import PreparedData, all_interactions
from tailor.refresh import add_new_items, compute_recommendations, summarize_recommendations
from tailor.registry import load_bundle
from tailor.settings import Settings
from tailor.store import BatchInfo, RecommendationStore
from tasks.common import stage_task


@dataclass(frozen=True)
class RefreshOutcome:
    batch: BatchInfo
    summary: dict[str, float]  # users, rows, coverage, tail_share of what was published
    out_dir: Path  # long-tail plot and a sample of the published lists


@stage_task()
def refresh_recommendations(
    prepared: PreparedData, settings: Settings, model_version: str, out_dir: Path
) -> RefreshOutcome:
    """Top-k for every user from the given model version, published atomically to the store."""
    logger = get_run_logger()
    bundle = load_bundle(settings.tracking_uri, settings.tracking.model_name, model_version)
    added = add_new_items(bundle, pl.read_parquet(prepared.items), settings.cache_dir)
    if added:
        logger.info(
            "%d items are newer than model version %s: scored by their text", added, model_version
        )
    interactions = all_interactions(prepared)
    profile_users: list[str] = []
    if prepared.users is not None:
        profile_users = pl.read_parquet(prepared.users)["user_id"].to_list()
    recs = compute_recommendations(
        bundle,
        interactions,
        settings.refresh.k,
        strength=settings.rerank.strength,
        head_share=settings.eval.head_share,
        candidates=settings.rerank.candidates,
        extra_users=profile_users,
        batch_users=settings.refresh.batch_users,
        progress=True,
    )
    summary = summarize_recommendations(recs, bundle, settings.eval.head_share, out_dir)
    summary["items_added"] = float(added)
    store = RecommendationStore(settings.store_url)
    try:
        info = store.publish(
            recs, model_version=model_version, chunk_rows=settings.refresh.chunk_rows
        )
    finally:
        store.dispose()
    logger.info(
        "published %d recommendations for %d users (batch %s, model version %s)",
        info.n_rows,
        info.n_users,
        info.batch_id,
        model_version,
    )
    return RefreshOutcome(batch=info, summary=summary, out_dir=Path(out_dir))
