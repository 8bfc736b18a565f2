"""Load, clean (rejects to quarantine) and split: the files every later stage reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from tailor import columns as C
from tailor.data.load import load_clean
from tailor.data.protocol import Histories, build_histories, choose_cold_items
from tailor.data.split import SEQ, split_leave_one_out
from tailor.settings import Settings
from tailor.tracking.record import Record


@dataclass(frozen=True)
class PreparedData:
    """Clean, split data of one run, as files."""

    interactions: Path  # clean warm interactions with C.SPLIT and SEQ
    items: Path  # clean items (C.ITEM_ID, C.TEXT, C.LABEL, ...), row = item position
    users: Path | None
    quarantine: Path
    report: dict[str, dict[str, Any]]
    n_users: int
    n_items: int
    n_interactions: int
    cold_events: Path | None = None  # events on items held out of training (cold-item protocol)
    n_cold_items: int = 0

    def record(self) -> Record:
        metrics = {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": self.n_interactions,
        }
        for source, report in self.report.items():
            for reason, count in (report.get("rejected") or {}).items():
                metrics[f"quarantined.{source}.{reason.replace(' ', '_')}"] = count
        folder = Path(self.quarantine).parent
        artifacts = [(folder / "cleaning_report.json", "cleaning"), (self.quarantine, "cleaning")]
        return Record(metrics=metrics, artifacts=artifacts)


def prepare_data(settings: Settings, out_dir: Path, hold_out_cold: bool = True) -> PreparedData:
    """Load the configured source and the live log, clean them and split them in time.

    With `hold_out_cold`, a seeded share of items (`eval.cold_item_share`) is taken out of the
    warm data entirely and their events kept apart for the cold-item protocol.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = load_clean(settings)
    share = settings.eval.cold_item_share if hold_out_cold else 0.0
    cold = choose_cold_items(clean.interactions, share, settings.seed)
    is_cold = pl.col(C.ITEM_ID).is_in(pl.lit(pl.Series(cold, dtype=pl.Utf8)).implode())
    split = split_leave_one_out(clean.interactions.filter(~is_cold), settings.seed)
    cold_events = clean.interactions.filter(is_cold)

    paths = {
        "interactions": out_dir / "interactions.parquet",
        "items": out_dir / "items.parquet",
        "quarantine": out_dir / "quarantine.parquet",
    }
    split.write_parquet(paths["interactions"])
    clean.items.write_parquet(paths["items"])
    clean.quarantine.write_parquet(paths["quarantine"])
    users_path = None
    if clean.users is not None:
        users_path = out_dir / "users.parquet"
        clean.users.write_parquet(users_path)
    (out_dir / "cleaning_report.json").write_text(json.dumps(clean.report, indent=2))
    cold_path = out_dir / "cold_events.parquet"
    cold_events.write_parquet(cold_path)
    return PreparedData(
        interactions=paths["interactions"],
        items=paths["items"],
        users=users_path,
        quarantine=paths["quarantine"],
        report=clean.report,
        n_users=split[C.USER_ID].n_unique(),
        n_items=clean.items.height,
        n_interactions=split.height + cold_events.height,
        cold_events=cold_path,
        n_cold_items=len(cold),
    )


def load_histories(prepared: PreparedData) -> Histories:
    """The evaluation protocol's histories (see `tailor.data.protocol`)."""
    cold = pl.read_parquet(prepared.cold_events) if prepared.cold_events else None
    return build_histories(
        pl.read_parquet(prepared.interactions), pl.read_parquet(prepared.items), cold
    )


def all_interactions(prepared: PreparedData) -> pl.DataFrame:
    """Warm and cold events together: everything known about users."""
    warm = pl.read_parquet(prepared.interactions).drop(C.SPLIT, SEQ)
    if prepared.cold_events is None:
        return warm
    cold = pl.read_parquet(prepared.cold_events).select(warm.columns)
    return pl.concat([warm, cold]).sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)
