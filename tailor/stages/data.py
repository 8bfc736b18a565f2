"""Load, clean (rejects to quarantine) and split: the files every later stage reads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from tailor import columns as C
from tailor.data.load import load_clean, load_clean_partitioned
from tailor.data.partitioned import write_atomically
from tailor.data.privacy import pseudonym_key, pseudonymise, public_quarantine
from tailor.data.protocol import Histories, build_histories, choose_cold_items, event_histories
from tailor.data.sources import DataError
from tailor.data.split import SEQ, positive_flags, split_leave_one_out
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
    fingerprint: str = ""  # of every clean event and item text: the data a fit could see
    data_start: str = ""  # ISO time of the first and the last event
    data_end: str = ""
    positive_threshold: float | None = None  # the resolved data.positive_min_weight
    n_positives: int = 0
    exam: str = ""  # the fingerprint plus every setting that decides the test cases' scores
    # What MLflow gets of the quarantine: pseudonymised ids, no profile fields (unless opted in).
    public_quarantine: Path | None = None
    # Prepared in user partitions only: every event (warm and cold) with C.POSITIVE, each user's
    # together and in time order, so the production fit streams its windows from disk.
    all_events: Path | None = None

    def record(self) -> Record:
        metrics = {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": self.n_interactions,
            "n_positives": self.n_positives,
        }
        for source, report in self.report.items():
            for reason, count in (report.get("rejected") or {}).items():
                metrics[f"quarantined.{source}.{reason.replace(' ', '_')}"] = count
        folder = Path(self.quarantine).parent
        logged = self.public_quarantine or self.quarantine
        artifacts = [(folder / "cleaning_report.json", "cleaning"), (logged, "cleaning")]
        tags = {
            "data_fingerprint": self.fingerprint,
            "data_start": self.data_start,
            "data_end": self.data_end,
            "exam": self.exam,
        }
        return Record(metrics=metrics, artifacts=artifacts, tags=tags)


def prepare_data(settings: Settings, out_dir: Path, hold_out_cold: bool = True) -> PreparedData:
    """Load the configured source and the live log, clean them and split them in time.

    With `hold_out_cold`, a seeded share of items (`eval.cold_item_share`) is taken out of the
    warm data entirely and their events kept apart for the cold-item protocol. With
    `data.partition_events` the events go through cleaning and the split one user partition
    at a time (`_prepare_in_parts`), with the same result files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.data.partition_events is not None:
        return _prepare_in_parts(settings, out_dir, hold_out_cold)
    clean = load_clean(settings)
    threshold = settings.data.positive_threshold
    share = settings.eval.cold_item_share if hold_out_cold else 0.0
    cold = choose_cold_items(clean.interactions, share, settings.seed)
    is_cold = _is_cold(cold)
    split = split_leave_one_out(clean.interactions.filter(~is_cold), settings.seed, threshold)
    cold_events = clean.interactions.filter(is_cold).with_columns(
        positive_flags(pl.col(C.WEIGHT), threshold)
    )
    times = clean.interactions[C.TIMESTAMP]
    fingerprint = data_fingerprint(clean.interactions, clean.items)
    written = _write_catalogue(
        settings, out_dir, clean.items, clean.users, clean.quarantine, clean.report
    )
    split.write_parquet(out_dir / "interactions.parquet")
    cold_path = out_dir / "cold_events.parquet"
    cold_events.write_parquet(cold_path)
    (out_dir / "cleaning_report.json").write_text(json.dumps(clean.report, indent=2))
    return PreparedData(
        interactions=out_dir / "interactions.parquet",
        report=clean.report,
        n_users=split[C.USER_ID].n_unique(),
        n_items=clean.items.height,
        n_interactions=split.height + cold_events.height,
        cold_events=cold_path,
        n_cold_items=len(cold),
        fingerprint=fingerprint,
        exam=exam_key(fingerprint, settings, share),
        data_start=times.min().isoformat(),
        data_end=times.max().isoformat(),
        positive_threshold=threshold,
        n_positives=int(split[C.POSITIVE].sum() + cold_events[C.POSITIVE].sum()),
        **written,
    )


def _is_cold(cold: list[str]) -> pl.Expr:
    return pl.col(C.ITEM_ID).is_in(pl.lit(pl.Series(cold, dtype=pl.Utf8)).implode())


def _write_catalogue(
    settings: Settings,
    out_dir: Path,
    items: pl.DataFrame,
    users: pl.DataFrame | None,
    quarantine: pl.DataFrame,
    report: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Items, users and the quarantine (and what MLflow may see of it) as files: the
    `PreparedData` fields they fill."""
    items.write_parquet(out_dir / "items.parquet")
    quarantine.write_parquet(out_dir / "quarantine.parquet")
    public = out_dir / "quarantine.parquet"
    if not settings.tracking.log_personal_data:
        public = out_dir / "public" / "quarantine.parquet"
        public.parent.mkdir(exist_ok=True)
        users_source = (report.get("users") or {}).get("file")
        redacted = public_quarantine(quarantine, pseudonym_key_of(settings), users_source)
        redacted.write_parquet(public)
    users_path = None
    if users is not None:
        users_path = out_dir / "users.parquet"
        users.write_parquet(users_path)
    return {
        "items": out_dir / "items.parquet",
        "users": users_path,
        "quarantine": out_dir / "quarantine.parquet",
        "public_quarantine": public,
    }


def _prepare_in_parts(settings: Settings, out_dir: Path, hold_out_cold: bool) -> PreparedData:
    """`prepare_data` one user partition at a time: memory holds one part of about
    `data.partition_events` events, never the file. The split is per user (its tie order a
    hash of each event), so the files hold exactly the rows, splits and positions of the
    whole-file path; only the order of users in them differs, which no reader depends on.

    The fingerprint is of the parts in bucket order, so it differs from the whole-file path's
    for the same data: a run in parts and a run at once count as two exams (the safe side).
    """
    work = out_dir / "parts"
    shutil.rmtree(work, ignore_errors=True)  # a retried task starts from the file again
    clean = load_clean_partitioned(settings, work)
    threshold = settings.data.positive_threshold
    share = settings.eval.cold_item_share if hold_out_cold else 0.0
    with_events = pl.scan_parquet(clean.parts).select(C.ITEM_ID).unique().collect()
    cold = choose_cold_items(with_events, share, settings.seed)
    is_cold = _is_cold(cold)
    for stage in ("warm", "cold", "all"):
        (work / stage).mkdir()
    warm_parts, cold_parts, all_parts = [], [], []
    digest = hashlib.sha256(f"parts:{clean.n_parts}".encode())
    n_users = n_warm = n_cold = n_positives = 0
    start = end = None
    for part in tqdm(clean.parts, desc="split", unit="part"):
        events = pl.read_parquet(part)
        digest.update(data_fingerprint(events, clean.items.head(0)).encode())
        first, last = events[C.TIMESTAMP].min(), events[C.TIMESTAMP].max()
        start = first if start is None else min(start, first)
        end = last if end is None else max(end, last)
        warm = events.filter(~is_cold)
        if warm.height:
            warm = split_leave_one_out(warm, settings.seed, threshold)
            write_atomically(warm, work / "warm" / part.name)
            warm_parts.append(work / "warm" / part.name)
            n_users += warm[C.USER_ID].n_unique()  # users never span two parts
            n_warm += warm.height
            n_positives += int(warm[C.POSITIVE].sum())
        cold_events = events.filter(is_cold).with_columns(
            positive_flags(pl.col(C.WEIGHT), threshold)
        )
        if cold_events.height:
            write_atomically(cold_events, work / "cold" / part.name)
            cold_parts.append(work / "cold" / part.name)
            n_cold += cold_events.height
            n_positives += int(cold_events[C.POSITIVE].sum())
        if warm.height or cold_events.height:
            write_atomically(_merged_events(warm, cold_events), work / "all" / part.name)
            all_parts.append(work / "all" / part.name)
        del events, warm, cold_events
    if not warm_parts:
        raise DataError(f"interactions file {settings.data.interactions_path}: no event is warm")
    digest.update(data_fingerprint(_no_events(), clean.items).encode())
    fingerprint = digest.hexdigest()[:32]
    written = _write_catalogue(
        settings, out_dir, clean.items, clean.users, clean.quarantine, clean.report
    )
    _concat_parts(warm_parts, out_dir / "interactions.parquet")
    cold_path = out_dir / "cold_events.parquet"
    if cold_parts:
        _concat_parts(cold_parts, cold_path)
    else:
        pl.read_parquet(warm_parts[0]).head(0).drop(C.SPLIT, SEQ).write_parquet(cold_path)
    all_events = out_dir / "all_events.parquet"
    _concat_parts(all_parts, all_events)
    (out_dir / "cleaning_report.json").write_text(json.dumps(clean.report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return PreparedData(
        interactions=out_dir / "interactions.parquet",
        report=clean.report,
        n_users=n_users,
        n_items=clean.items.height,
        n_interactions=n_warm + n_cold,
        cold_events=cold_path,
        n_cold_items=len(cold),
        fingerprint=fingerprint,
        exam=exam_key(fingerprint, settings, share),
        data_start=start.isoformat(),
        data_end=end.isoformat(),
        positive_threshold=threshold,
        n_positives=n_positives,
        all_events=all_events,
        **written,
    )


def _merged_events(warm: pl.DataFrame, cold: pl.DataFrame) -> pl.DataFrame:
    """One part's warm and cold events in `scan_interactions`' order: by user and time, warm
    before cold at equal times (users never span parts, so per part is the global order)."""
    columns = [C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.WEIGHT, C.POSITIVE]
    frames = [f.select(columns) for f in (warm, cold) if f.height]
    return pl.concat(frames).sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)


def _no_events() -> pl.DataFrame:
    """An empty events frame, so `data_fingerprint` hashes the catalogue alone."""
    return pl.DataFrame(
        schema={
            C.USER_ID: pl.Utf8,
            C.ITEM_ID: pl.Utf8,
            C.TIMESTAMP: pl.Datetime("us", "UTC"),
            C.WEIGHT: pl.Float64,
        }
    )


def _concat_parts(parts: list[Path], target: Path) -> None:
    """The parts as one file, streamed (never all in memory), published by rename."""
    tmp = target.with_name(f".{target.name}.tmp")
    pl.scan_parquet(parts).sink_parquet(tmp)
    os.replace(tmp, target)


def pseudonym_key_of(settings: Settings) -> bytes:
    configured = settings.tracking.pseudonym_key
    secret = configured.get_secret_value() if configured is not None else None
    return pseudonym_key(secret, settings.cache_dir)


def pseudonyms_for(settings: Settings):
    """ids -> what an artifact may show of them: pseudonyms, or the ids when opted in."""
    if settings.tracking.log_personal_data:
        return lambda ids: [str(i) for i in ids]
    key = pseudonym_key_of(settings)
    return lambda ids: pseudonymise(ids, key)


def exam_key(fingerprint: str, settings: Settings, cold_item_share: float) -> str:
    """What decides a run's test cases and how lists on them score: two runs with one key
    sat the same exam (see docs/ARCHITECTURE.md, "The champion gate")."""
    protocol = {
        "data": fingerprint,
        "seed": settings.seed,
        "cold_item_share": cold_item_share,
        "positive_threshold": settings.data.positive_threshold,
        "eval": settings.eval.model_dump(include={"ks", "head_share"}),
        "rerank": settings.rerank.model_dump(include={"strength", "candidates"}),
        "index": settings.index.model_dump(),
    }
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:32]


def data_fingerprint(interactions: pl.DataFrame, items: pl.DataFrame) -> str:
    """A hash of every clean event (user, item, time, weight) and item (id, text), in a
    canonical order: two runs with one fingerprint saw exactly the same data."""
    digest = hashlib.sha256()
    events = interactions.select(C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.WEIGHT).sort(
        [C.USER_ID, C.TIMESTAMP, C.ITEM_ID, C.WEIGHT]
    )
    catalogue = items.select(C.ITEM_ID, C.TEXT).sort(C.ITEM_ID)
    for frame in (events, catalogue):
        for column in frame.columns:
            values = frame[column]
            if values.dtype == pl.Utf8:
                digest.update("\x1f".join(values.to_list()).encode())
            else:
                digest.update(values.to_physical().to_numpy().tobytes())
            digest.update(b"\x1e")
    return digest.hexdigest()[:32]


def load_histories(prepared: PreparedData) -> Histories:
    """The evaluation protocol's histories (see `tailor.data.protocol`)."""
    cold = pl.read_parquet(prepared.cold_events) if prepared.cold_events else None
    return build_histories(
        pl.read_parquet(prepared.interactions), pl.read_parquet(prepared.items), cold
    )


def all_interactions(prepared: PreparedData) -> pl.DataFrame:
    """Warm and cold events together: everything known about users."""
    return scan_interactions(prepared).collect()


def scan_interactions(prepared: PreparedData) -> pl.LazyFrame:
    """`all_interactions`, lazily: a filter on it reads only the row groups it needs."""
    warm = pl.scan_parquet(prepared.interactions).drop(C.SPLIT, SEQ)
    if prepared.cold_events is None:
        return warm
    cold = pl.scan_parquet(prepared.cold_events).select(warm.collect_schema().names())
    return pl.concat([warm, cold]).sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)


def all_histories(prepared: PreparedData) -> tuple[list[str], list, list]:
    """Every user's every event (positions, liked flags): the production fit's data."""
    return event_histories(all_interactions(prepared), pl.read_parquet(prepared.items))
