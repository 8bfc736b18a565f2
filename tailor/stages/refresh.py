"""The nightly refresh: a model version's lists for every user, published atomically.

Users are split into blocks (ranges of sorted ids, `refresh.block_users` each). Each block is
scored on its own and written as one Parquet part, so blocks can run in parallel (on a Dask
cluster with `runner.kind = "dask"`) and a retried block only redoes itself. Publication then
streams every part into the store as one batch: readers see yesterday's lists or today's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
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
from tailor.stages.data import PreparedData, pseudonyms_for, scan_interactions
from tailor.tracking.record import Record
from tailor.tracking.registry import load_bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshPlan:
    """Which users each block scores: block i is the sorted ids from `firsts[i]` to `lasts[i]`."""

    model_version: str
    firsts: tuple[str, ...]
    lasts: tuple[str, ...]
    n_users: int
    parts_dir: Path  # part-00000.parquet, ...: per model version and data, so a rerun reuses

    @property
    def n_blocks(self) -> int:
        return len(self.firsts)

    def part(self, block: int) -> Path:
        return self.parts_dir / f"part-{block:05d}.parquet"


@dataclass(frozen=True)
class RefreshOutcome:
    batch: BatchInfo
    model_version: str
    summary: dict[str, float]  # users, rows, coverage, tail_share, items_added, blocks
    out_dir: Path  # long-tail plot and a sample of the published lists

    def record(self) -> Record:
        return Record(
            metrics={f"published_{k}": v for k, v in self.summary.items()},
            artifacts=[(self.out_dir, "refresh")],
            tags={"model_version": self.model_version, "batch_id": self.batch.batch_id},
        )


def plan_refresh(
    prepared: PreparedData, settings: Settings, model_version: str, work_dir: Path
) -> RefreshPlan:
    """Every user with events or a profile, sorted, cut into blocks of `refresh.block_users`."""
    ids = scan_interactions(prepared).select(C.USER_ID)
    if prepared.users is not None:
        ids = pl.concat([ids, pl.scan_parquet(prepared.users).select(C.USER_ID)])
    users = ids.unique().sort(C.USER_ID).collect()[C.USER_ID]
    if users.is_empty():
        raise ValueError("no users to refresh: the data has no events and no profiles")
    size = settings.refresh.block_users
    starts = range(0, users.len(), size)
    firsts = tuple(users[s] for s in starts)
    lasts = tuple(users[min(s + size, users.len()) - 1] for s in starts)
    # The parts belong to this model version and these data: a retried flow run finds and
    # keeps the parts its first attempt finished, and never mixes in another version's.
    parts_dir = Path(work_dir) / f"v{model_version}-{prepared.fingerprint[:12] or 'data'}"
    parts_dir.mkdir(parents=True, exist_ok=True)
    log.info("refresh plan: %d users in %d blocks of up to %d", users.len(), len(firsts), size)
    return RefreshPlan(model_version, firsts, lasts, users.len(), parts_dir)


def score_block(prepared: PreparedData, settings: Settings, plan: RefreshPlan, block: int) -> Path:
    """Top-k for the users of one block, written as one Parquet part (atomically, by rename).

    Idempotent: a part already written is kept, so a retried or re-run block costs nothing.
    """
    part = plan.part(block)
    if part.exists():
        log.info("block %d: part %s already written", block, part.name)
        return part
    bundle = serving_bundle(settings, plan.model_version, prepared.items)
    lo, hi = plan.firsts[block], plan.lasts[block]
    in_block = pl.col(C.USER_ID).is_between(pl.lit(lo), pl.lit(hi))
    events = scan_interactions(prepared).filter(in_block).collect()
    profile_only: list[str] = []
    if prepared.users is not None:
        profile_only = (
            pl.scan_parquet(prepared.users).filter(in_block).select(C.USER_ID).collect()
        )[C.USER_ID].to_list()
    recs = compute_recommendations(
        bundle,
        events,
        bundle_policy(bundle, settings.refresh.k, settings.rerank, settings.eval.head_share),
        extra_users=profile_only,
        batch_users=settings.refresh.batch_users,
        progress=plan.n_blocks == 1,
    ).sort(C.USER_ID, C.RANK)
    tmp = part.with_name(f".{part.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    recs.write_parquet(tmp)
    os.replace(tmp, part)  # a reader of the folder never sees half a part
    log.info(
        "block %d: %d users, %d rows -> %s",
        block,
        recs[C.USER_ID].n_unique(),
        recs.height,
        part.name,
    )
    return part


def publish_recommendations(
    prepared: PreparedData,
    settings: Settings,
    plan: RefreshPlan,
    parts: Sequence[Path],
    out_dir: Path,
) -> RefreshOutcome:
    """Every block's part into the store as one batch (all or nothing), then what it holds."""
    if len(parts) != plan.n_blocks:
        raise ValueError(f"expected {plan.n_blocks} parts, got {len(parts)}: nothing published")
    bundle = serving_bundle(settings, plan.model_version, prepared.items)
    summary = summarize_recommendations(
        parts, bundle, settings.eval.head_share, out_dir, show_ids=pseudonyms_for(settings)
    )
    summary["items_added"] = float(int(bundle.new.sum()))
    summary["blocks"] = float(plan.n_blocks)
    if int(summary["users"]) != plan.n_users:
        raise ValueError(
            f"the parts hold {int(summary['users'])} users, the plan {plan.n_users}: "
            "nothing published"
        )
    store = RecommendationStore(settings.store_url)
    try:
        info = store.publish_parts(
            parts, model_version=plan.model_version, chunk_rows=settings.refresh.chunk_rows
        )
    finally:
        store.dispose()
    log.info(
        "published %d recommendations for %d users (batch %s, model version %s)",
        info.n_rows,
        info.n_users,
        info.batch_id,
        plan.model_version,
    )
    return RefreshOutcome(info, plan.model_version, summary, Path(out_dir))


def refresh_recommendations(
    prepared: PreparedData, settings: Settings, model_version: str, out_dir: Path
) -> RefreshOutcome:
    """Plan, score every block here, one after another, and publish (the flow runs the blocks
    as tasks instead)."""
    plan = plan_refresh(prepared, settings, model_version, Path(out_dir) / "parts")
    parts = [score_block(prepared, settings, plan, b) for b in range(plan.n_blocks)]
    return publish_recommendations(prepared, settings, plan, parts, Path(out_dir) / "refresh")


_BUNDLES: dict[tuple[str, str, str, str], Bundle] = {}
_BUNDLES_LOCK = threading.Lock()


def serving_bundle(settings: Settings, model_version: str, items: Path) -> Bundle:
    """The version's bundle with the catalogue's newer items added, loaded once per process:
    every block a worker scores shares it."""
    key = (settings.tracking_uri, settings.tracking.model_name, model_version, str(items))
    with _BUNDLES_LOCK:
        if key not in _BUNDLES:
            bundle = load_bundle(*key[:3])
            added = add_new_items(bundle, pl.read_parquet(items), settings.cache_dir)
            if added:
                log.info(
                    "%d items are newer than model version %s: scored by their text",
                    added,
                    model_version,
                )
            _BUNDLES.clear()  # one version at a time is what a refresh needs
            _BUNDLES[key] = bundle
        return _BUNDLES[key]


def summarize_recommendations(
    recs: pl.DataFrame | Sequence[Path],
    bundle: Bundle,
    head_share: float,
    out_dir: Path,
    show_ids=None,
) -> dict[str, float]:
    """Coverage and tail share of what was published (a frame, or parts read one at a time),
    plus the long-tail plot and a sample (user ids through `show_ids`: pseudonyms unless
    personal data is opted in)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = [recs] if isinstance(recs, pl.DataFrame) else recs
    popularity = bundle.items[POPULARITY].to_numpy()
    positions = pl.DataFrame(
        {C.ITEM_ID: bundle.item_ids, "position": np.arange(bundle.n_items)},
        schema={C.ITEM_ID: pl.Utf8, "position": pl.Int64},
    )
    exposure = np.zeros(bundle.n_items, dtype=np.int64)
    users = rows = 0
    sample: pl.DataFrame | None = None
    for part in frames:
        frame = part if isinstance(part, pl.DataFrame) else pl.read_parquet(part)
        found = frame.select(C.ITEM_ID).join(positions, on=C.ITEM_ID, how="left")["position"]
        if found.null_count():
            raise ValueError(f"{found.null_count()} recommended items are not in the model")
        exposure += np.bincount(found.to_numpy(), minlength=bundle.n_items)
        users += frame[C.USER_ID].n_unique()
        rows += frame.height
        if sample is None:
            first = frame[C.USER_ID].unique(maintain_order=True).head(25)
            sample = frame.filter(pl.col(C.USER_ID).is_in(first.implode()))
    tail = ~head_mask(popularity, head_share)
    plot_long_tail(
        popularity,
        {"published": exposure},
        out_dir / "long_tail.png",
        head_share=head_share,
        title="Train popularity and exposure in the published recommendations",
    )
    if sample is not None:
        if show_ids is not None:
            shown = pl.Series(C.USER_ID, show_ids(sample[C.USER_ID].to_list()), dtype=pl.Utf8)
            sample = sample.with_columns(shown)
        sample.write_csv(out_dir / "sample_recommendations.csv")
    return {
        "users": float(users),
        "rows": float(rows),
        "coverage": float((exposure > 0).mean()),
        "tail_share": float(exposure[tail].sum() / max(rows, 1)),
    }
