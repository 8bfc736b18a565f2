"""Everything a run knows about users and items, cleaned: the source plus the live log."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from tailor import columns as C
from tailor.data.clean import CleanData, clean_all
from tailor.data.livelog import LiveLog
from tailor.data.sources import DataError, is_remote, load_raw, storage_options
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


def load_clean(settings: Settings) -> CleanData:
    """The configured source plus the service's live log (items, events), cleaned."""
    raw = load_raw(settings)
    vectors = read_item_vectors(settings.data)
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
    return clean_all(
        raw,
        settings.data.timestamp_format,
        item_vectors=vectors,
        live_items=live_items,
        live_events=live_events,
        live_source=repr(live),
    )
