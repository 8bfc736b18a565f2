"""Versioned schemas: a live log or store made before versions were kept opens and is
brought up to date; one made by a newer tailor is refused with a clear error."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from sqlalchemy import create_engine, inspect, text

from tailor.data import livelog
from tailor.data.livelog import LiveEvent, LiveLog, LiveLogError
from tailor.data.schema import version_of
from tailor.serving import store as store_module
from tailor.serving.store import RecommendationStore, StoreError


def _indexes(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {i["name"] for i in inspect(engine).get_indexes(table)}
    finally:
        engine.dispose()


def _old_file(
    url: str, metadata, drop_index: str | None = None, rows: list[str] = (), drop=()
) -> None:
    """A database as an earlier tailor left it: its tables, no version row."""
    engine = create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        if drop_index:
            conn.execute(text(f"DROP INDEX {drop_index}"))
        for table, column in drop:  # columns added since
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        for statement in rows:
            conn.execute(text(statement))
    engine.dispose()


def test_a_live_log_made_before_versions_keeps_its_events_and_gains_the_index(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    _old_file(
        url,
        livelog._METADATA,
        drop_index="live_events_by_user",
        drop=[("live_events", "origin"), ("live_items", "origin")],
        rows=[
            "INSERT INTO live_events (user_id, item_id, kind, weight, timestamp) "
            "VALUES ('u1', 'i1', 'view', 1.0, '2026-12-01 10:00:00.000000')"
        ],
    )
    assert "live_events_by_user" not in _indexes(url, "live_events")
    log = LiveLog(url)
    assert log.events_of("u1") == [("i1", 1.0)]
    log.append_events([LiveEvent("u1", "i2", "click", 1.0, datetime.now(UTC))])
    assert [i for i, _ in log.events_of("u1")] == ["i1", "i2"]
    log.dispose()
    assert "live_events_by_user" in _indexes(url, "live_events")
    engine = create_engine(url)
    for table in ("live_events", "live_items"):
        assert "origin" in {c["name"] for c in inspect(engine).get_columns(table)}
    engine.dispose()
    engine = create_engine(url)
    assert version_of(engine, "live log") == livelog.MIGRATIONS[-1].version
    engine.dispose()
    # Opening again changes nothing.
    assert LiveLog(url).events_of("u1") == [("i1", 1.0), ("i2", 1.0)]


def test_a_database_from_a_newer_tailor_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    LiveLog(url).append_events([LiveEvent("u", "i", "view", 1.0, datetime.now(UTC))])
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE tailor_schema SET version = 99"))
    engine.dispose()
    with pytest.raises(LiveLogError, match="schema version 99, made by a newer tailor"):
        LiveLog(url).events_of("u")


def test_a_store_made_before_versions_serves_its_batch_and_gains_the_one_published_index(
    tmp_path,
):
    url = f"sqlite:///{tmp_path / 'recs.db'}"
    _old_file(
        url,
        store_module._METADATA,
        drop_index="uq_batches_one_published",
        rows=[
            "INSERT INTO batches VALUES ('b1', '3', '2026-12-01 10:00:00.000000', 'published', "
            "1, 1, NULL)",
            "INSERT INTO recommendations VALUES ('b1', 'u1', 1, 'i9', 0.5, 'why', 'Item 9')",
        ],
    )
    store = RecommendationStore(url)
    got = store.read("u1")
    assert got[["item_id", "model_version"]].rows() == [("i9", "3")]
    store.dispose()
    assert "uq_batches_one_published" in _indexes(url, "batches")
    engine = create_engine(url)
    assert version_of(engine, "recommendation store") == store_module.MIGRATIONS[-1].version
    engine.dispose()
    with RecommendationStore(url) as again:
        again.publish(
            pl.DataFrame(
                {
                    "user_id": ["u2"],
                    "item_id": ["i1"],
                    "rank": [1],
                    "score": [1.0],
                    "reason": ["r"],
                    "label": ["L"],
                }
            ),
            model_version="4",
        )
        assert again.read("u2")["model_version"].to_list() == ["4"]


def test_a_store_from_a_newer_tailor_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'recs.db'}"
    RecommendationStore(url).current()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE tailor_schema SET version = 7"))
    engine.dispose()
    with pytest.raises(StoreError, match="made by a newer tailor"):
        RecommendationStore(url).current()
