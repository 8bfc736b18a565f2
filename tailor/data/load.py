"""Everything a run knows about users and items, cleaned: the source plus the live log."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from tailor import columns as C
from tailor.data.clean import (
    CleanData,
    clean_all,
    clean_catalogue,
    clean_live_events,
    empty_quarantine,
    ordered_quarantine,
    ordered_report,
    report_entry,
)
from tailor.data.livelog import LiveLog
from tailor.data.partitioned import (
    bucket_of,
    clean_interactions_partitioned,
    part_name,
    user_bucket,
    write_atomically,
)
from tailor.data.sources import (
    DataError,
    interactions_columns,
    is_remote,
    load_files,
    load_raw,
    storage_options,
)
from tailor.settings import DataSettings, Settings

log = logging.getLogger(__name__)


def read_item_vectors(data: DataSettings) -> pl.DataFrame | None:
    """The user's own item vectors (`data.item_vectors_path`); None when the encoder makes them."""
    path = data.item_vectors_path
    if path is None:
        return None
    if not is_remote(path) and not Path(path).is_file():
        raise DataError(f"item vectors file {path} does not exist (setting data.item_vectors_path)")
    try:
        frame = pl.read_parquet(
            path, storage_options=storage_options() if is_remote(path) else None
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"item vectors file {path} could not be read: {exc}") from exc
    cols = data.columns
    for name, setting in ((cols.item_id, "item_id"), (cols.vector, "vector")):
        if name not in frame.columns:
            raise DataError(
                f"item vectors file {path} has no column {name!r} "
                f"(setting data.columns.{setting}); columns present: {', '.join(frame.columns)}"
            )
    return frame.select(
        pl.col(cols.item_id).cast(pl.Utf8).alias(C.ITEM_ID),
        pl.col(cols.vector).alias(C.VECTOR),
    )


def _read_live_log(settings: Settings) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """The service's live log: (items, events, its name for the report)."""
    live = LiveLog(settings.live_url)
    try:
        live_items, live_events = live.items(), live.events()
    finally:
        live.dispose()
    if live_items.height or live_events.height:
        log.info(
            "the live log adds %d items and %d events (%r)",
            live_items.height,
            live_events.height,
            live,
        )
    return live_items, live_events, repr(live)


def load_clean(settings: Settings) -> CleanData:
    """The configured source plus the service's live log (items, events), cleaned."""
    raw = load_raw(settings)
    vectors = read_item_vectors(settings.data)
    live_items, live_events, live_source = _read_live_log(settings)
    return clean_all(
        raw,
        settings.data.timestamp_format,
        item_vectors=vectors,
        live_items=live_items,
        live_events=live_events,
        live_source=live_source,
    )


@dataclass(frozen=True)
class CleanParts:
    """`CleanData` with the events as Parquet parts: part files in bucket order, each sorted by
    user then time, a user's events (file and live log) all in one part."""

    parts: list[Path]
    n_parts: int
    items: pl.DataFrame
    users: pl.DataFrame | None
    quarantine: pl.DataFrame
    report: dict[str, dict[str, Any]]


def load_clean_partitioned(settings: Settings, out_dir: Path) -> CleanParts:
    """`load_clean` for an interactions file bigger than memory (`data.partition_events`):
    the same rules and the same rows kept, the events written in user parts under `out_dir`."""
    data = settings.data
    if data.partition_events is None or data.interactions_path is None:
        raise ValueError("load_clean_partitioned needs data.partition_events and a files source")
    raw = load_files(data, with_interactions=False)
    vectors = read_item_vectors(data)
    live_items, live_events, live_source = _read_live_log(settings)
    catalogue = clean_catalogue(raw, vectors, live_items, live_source)
    known = catalogue.items.get_column(C.ITEM_ID)
    source = str(data.interactions_path)
    result = clean_interactions_partitioned(
        Path(source),
        out_dir,
        known,
        data.timestamp_format,
        part_rows=data.partition_events,
        columns=interactions_columns(data),
    )
    rejects = [pl.read_parquet(p) for p in result.quarantine]
    q_inter = pl.concat(rejects) if rejects else empty_quarantine()
    entry = report_entry(source, result.rows_in, result.rows_out, q_inter)
    live = clean_live_events(live_events, known, live_source)
    parts = result.parts
    if live is not None and live[0].height:
        parts = _add_to_parts(parts, live[0], result.n_parts, out_dir / "clean")
    return CleanParts(
        parts=parts,
        n_parts=result.n_parts,
        items=catalogue.items,
        users=catalogue.users,
        quarantine=ordered_quarantine(q_inter, catalogue, live[1] if live else None),
        report=ordered_report(entry, catalogue.report, live[2] if live else None),
    )


def _add_to_parts(
    parts: list[Path], events: pl.DataFrame, n_parts: int, folder: Path
) -> list[Path]:
    """Clean live events merged into the part of their user, after the file's events of the
    same time (as `clean_all` orders them)."""
    schema = pl.read_parquet_schema(parts[0])
    buckets = events.with_columns(user_bucket(C.USER_ID, n_parts).alias("__bucket"))
    out = {bucket_of(p): p for p in parts}
    for (bucket,), extra in buckets.partition_by(
        "__bucket", as_dict=True, include_key=False
    ).items():
        target = folder / part_name(bucket)
        base = pl.read_parquet(target) if bucket in out else pl.DataFrame(schema=schema)
        merged = pl.concat([base, extra], how="diagonal_relaxed").sort(
            [C.USER_ID, C.TIMESTAMP], maintain_order=True
        )
        write_atomically(merged.select(base.columns), target)
        out[bucket] = target
    return [out[b] for b in sorted(out)]
