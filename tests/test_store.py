"""The recommendation store: atomic publish, reads of the published batch only, cleanup.

Runs on a SQLite file; set TAILOR_TEST_POSTGRES_URL (a database the tests may drop tables in)
to run every test against PostgreSQL as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import create_engine, text

from tailor import columns as C
from tailor.serving.store import READ_SCHEMA, BatchInfo, RecommendationStore, StoreError

_BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("TAILOR_TEST_POSTGRES_URL") else [])


class _InjectedError(RuntimeError):
    pass


@pytest.fixture(params=_BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        # A directory that does not exist yet: the store must create it.
        return f"sqlite:///{tmp_path / 'store' / 'recs.db'}"
    pg_url = os.environ["TAILOR_TEST_POSTGRES_URL"]
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS recommendations, batches"))
    engine.dispose()
    return pg_url


@pytest.fixture
def store(url: str) -> Iterator[RecommendationStore]:
    s = RecommendationStore(url)
    yield s
    s.dispose()


def _recs(users: range, k: int, tag: str) -> pl.DataFrame:
    """k ranked items per user; item ids carry `tag` so each batch's rows are recognisable."""
    rows = [
        {
            C.USER_ID: f"u{u}",
            C.ITEM_ID: f"{tag}-{u}-{r}",
            C.RANK: r,
            C.SCORE: 1.0 - r / (k + 1),
            C.REASON_TEXT: f"because of {tag}",
            C.LABEL: f"Item {tag} {r}",
        }
        for u in users
        for r in range(1, k + 1)
    ]
    return pl.DataFrame(rows)


def _rows_per_batch(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT batch_id, COUNT(*) FROM recommendations GROUP BY batch_id")
            ).all()
    finally:
        engine.dispose()
    return {batch_id: n for batch_id, n in rows}


def _lists(store: RecommendationStore, users: list[str]) -> dict[str, list[str]]:
    return {u: store.read(u)[C.ITEM_ID].to_list() for u in users}


def test_store_is_lazy_and_empty_before_first_publish(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "recs.db"
    store = RecommendationStore(f"sqlite:///{path}")
    assert not path.parent.exists()
    assert store.current() is None
    assert path.exists()
    assert store.history() == []
    assert store.users() == []
    empty = store.read("u1")
    assert empty.is_empty()
    assert empty.schema == pl.Schema(READ_SCHEMA)
    store.dispose()


def test_publish_then_read_in_rank_order(store: RecommendationStore) -> None:
    recs = _recs(range(3), k=5, tag="a").sample(fraction=1.0, shuffle=True, seed=7)
    info = store.publish(recs, "v1", extra={"recall@20": 0.31})

    assert info.status == "published"
    assert (info.n_users, info.n_rows) == (3, 15)
    assert store.current() == info
    assert store.history()[0].extra == {"recall@20": 0.31}

    got = store.read("u1")
    assert list(got.columns) == [*READ_SCHEMA]
    assert got[C.RANK].to_list() == [1, 2, 3, 4, 5]
    assert got[C.ITEM_ID].to_list() == [f"a-1-{r}" for r in range(1, 6)]
    assert got[C.SCORE].to_list() == sorted(got[C.SCORE].to_list(), reverse=True)
    assert got[C.LABEL][0] == "Item a 1"
    assert set(got[C.MODEL_VERSION]) == {"v1"}
    assert store.read("u1", limit=2)[C.RANK].to_list() == [1, 2]

    unknown = store.read("nobody")
    assert unknown.is_empty()
    assert unknown.schema == got.schema
    assert store.users() == ["u0", "u1", "u2"]
    assert store.users(limit=2) == ["u0", "u1"]


def test_ids_are_stored_as_strings(store: RecommendationStore) -> None:
    recs = pl.DataFrame(
        {
            C.USER_ID: [10, 10, 2],
            C.ITEM_ID: [7, 8, 9],
            C.RANK: [1, 2, 1],
            C.SCORE: [0.9, 0.8, 0.7],
            C.REASON_TEXT: ["x", None, "z"],
            C.LABEL: [None, "B", "C"],
        }
    )
    store.publish(recs, "v1")
    assert store.users() == ["10", "2"]
    got = store.read("10")
    assert got[C.ITEM_ID].to_list() == ["7", "8"]
    assert got[C.REASON_TEXT].to_list() == ["x", None]


def test_second_publish_replaces_the_first(url: str, store: RecommendationStore) -> None:
    first = store.publish(_recs(range(0, 5), k=4, tag="a"), "v1")
    second = store.publish(_recs(range(3, 8), k=4, tag="b"), "v2")

    assert store.current() == second
    assert store.read("u0").is_empty()  # only in the first batch
    got = store.read("u4")
    assert got[C.ITEM_ID].to_list() == [f"b-4-{r}" for r in range(1, 5)]
    assert set(got[C.MODEL_VERSION]) == {"v2"}
    assert store.users() == [f"u{u}" for u in range(3, 8)]

    history = store.history()
    assert [(b.batch_id, b.status) for b in history] == [
        (second.batch_id, "published"),
        (first.batch_id, "retired"),
    ]
    assert store.history(limit=1) == history[:1]
    assert _rows_per_batch(url) == {second.batch_id: 20}
    if url.startswith("postgresql"):
        # One partition per batch; the retired one is dropped, not emptied row by row.
        engine = create_engine(url)
        with engine.connect() as conn:
            partitions = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'recommendations_%'")
            ).scalars()
            assert list(partitions) == [f"recommendations_{second.batch_id}"]
        engine.dispose()


def test_failed_publish_keeps_previous_batch_readable(
    url: str, store: RecommendationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = store.publish(_recs(range(10), k=6, tag="a"), "v1")
    users = [f"u{u}" for u in range(10)]
    expected = _lists(store, users)

    real_insert = store._insert_chunk
    calls = 0

    def insert_then_fail(conn, chunk):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            raise _InjectedError("disk full")
        real_insert(conn, chunk)

    monkeypatch.setattr(store, "_insert_chunk", insert_then_fail)
    with pytest.raises(_InjectedError):
        store.publish(_recs(range(10), k=6, tag="b"), "v2", chunk_rows=20)

    assert store.current() == old
    assert store.users() == users
    assert _lists(store, users) == expected  # every user, every rank, nothing from "b"
    stale = store.history()[0]
    assert (stale.model_version, stale.status) == ("v2", "writing")
    assert _rows_per_batch(url) == {old.batch_id: 60, stale.batch_id: 20}

    monkeypatch.undo()
    new = store.publish(_recs(range(10), k=6, tag="c"), "v3")
    statuses = {b.batch_id: b.status for b in store.history()}
    assert statuses == {
        new.batch_id: "published",
        stale.batch_id: "failed",
        old.batch_id: "retired",
    }
    assert _rows_per_batch(url) == {new.batch_id: 60}
    assert store.read("u9")[C.ITEM_ID].to_list() == [f"c-9-{r}" for r in range(1, 7)]


def test_reader_sees_old_batch_while_a_publish_is_in_flight(
    url: str, store: RecommendationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = store.publish(_recs(range(0, 4), k=3, tag="a"), "v1")
    expected = _lists(store, ["u0", "u3"])
    seen: list[tuple[str | None, dict[str, list[str]], list[str], bool]] = []

    real_insert = store._insert_chunk
    calls = 0

    def insert_then_peek(conn, chunk):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        real_insert(conn, chunk)
        if calls == 2:
            # First chunk committed under a 'writing' batch, second one uncommitted right now.
            reader = RecommendationStore(url)
            try:
                current = reader.current()
                seen.append(
                    (
                        current.batch_id if current else None,
                        _lists(reader, ["u0", "u3"]),
                        reader.users(),
                        reader.read("u9").is_empty(),  # a user only the new batch has
                    )
                )
            finally:
                reader.dispose()
            raise _InjectedError("stop here")

    monkeypatch.setattr(store, "_insert_chunk", insert_then_peek)
    with pytest.raises(_InjectedError):
        store.publish(_recs(range(3, 10), k=3, tag="b"), "v2", chunk_rows=6)

    assert seen == [(old.batch_id, expected, ["u0", "u1", "u2", "u3"], True)]


def test_refresh_overtaken_by_a_later_one_refuses_to_publish(
    url: str, store: RecommendationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refresh started later finishes first; its cleanup takes the earlier one for crashed
    # and deletes its rows, so the earlier one must not publish the remainder.
    store.publish(_recs(range(3), k=2, tag="a"), "v1")
    real_insert = store._insert_chunk
    calls = 0
    later: list[BatchInfo] = []

    def overtaken(conn, chunk):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            other = RecommendationStore(url)
            try:
                later.append(other.publish(_recs(range(3), k=2, tag="c"), "v3"))
            finally:
                other.dispose()
        real_insert(conn, chunk)

    monkeypatch.setattr(store, "_insert_chunk", overtaken)
    with pytest.raises(StoreError, match="no longer being written"):
        store.publish(_recs(range(3), k=2, tag="b"), "v2", chunk_rows=2)

    assert store.current() == later[0]
    assert store.read("u1")[C.ITEM_ID].to_list() == ["c-1-1", "c-1-2"]
    assert store.history()[1].status == "failed"


def test_cleanup_failure_does_not_undo_the_publish(
    url: str, store: RecommendationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = store.publish(_recs(range(2), k=2, tag="a"), "v1")

    def broken_cleanup(*args: object) -> None:
        raise _InjectedError("lock timeout")

    monkeypatch.setattr(store, "_cleanup", broken_cleanup)
    second = store.publish(_recs(range(2), k=2, tag="b"), "v2")
    assert store.current() == second
    assert store.read("u0")[C.ITEM_ID].to_list() == ["b-0-1", "b-0-2"]
    assert _rows_per_batch(url) == {first.batch_id: 4, second.batch_id: 4}

    monkeypatch.undo()
    third = store.publish(_recs(range(2), k=2, tag="c"), "v3")
    # The retry removes what the failed cleanup left, not just the batch retired now.
    assert _rows_per_batch(url) == {third.batch_id: 4}


@pytest.mark.parametrize("missing", [C.USER_ID, C.ITEM_ID, C.RANK, C.SCORE, C.REASON_TEXT, C.LABEL])
def test_missing_column_is_named(store: RecommendationStore, missing: str) -> None:
    recs = _recs(range(2), k=2, tag="a").drop(missing)
    with pytest.raises(StoreError, match=repr(missing)):
        store.publish(recs, "v1")
    assert store.history() == []


def test_duplicate_user_rank_is_rejected(store: RecommendationStore) -> None:
    recs = _recs(range(2), k=3, tag="a").with_columns(
        pl.when(pl.col(C.RANK) == 3).then(2).otherwise(pl.col(C.RANK)).alias(C.RANK)
    )
    with pytest.raises(StoreError, match="duplicate"):
        store.publish(recs, "v1")
    assert store.history() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (pl.lit(None, dtype=pl.String).alias(C.ITEM_ID), "missing values"),
        (pl.lit(float("nan")).alias(C.SCORE), "NaN"),
        ((pl.col(C.RANK) - 1).alias(C.RANK), "1-based"),
    ],
)
def test_bad_values_are_rejected(store: RecommendationStore, change: pl.Expr, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        store.publish(_recs(range(2), k=2, tag="a").with_columns(change), "v1")
    assert store.history() == []


def test_empty_set_and_bad_arguments_are_rejected(store: RecommendationStore) -> None:
    with pytest.raises(StoreError, match="empty"):
        store.publish(_recs(range(1), k=2, tag="a").clear(), "v1")
    recs = _recs(range(1), k=2, tag="a")
    with pytest.raises(StoreError, match="model_version"):
        store.publish(recs, "")
    with pytest.raises(StoreError, match="chunk_rows"):
        store.publish(recs, "v1", chunk_rows=0)
    with pytest.raises(StoreError, match="JSON"):
        store.publish(recs, "v1", extra={"when": object()})
    with pytest.raises(StoreError, match="limit"):
        store.read("u0", limit=0)
    assert store.history() == []


def test_bad_url_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = RecommendationStore(f"sqlite:///{blocker / 'recs.db'}")
    with pytest.raises(StoreError):
        store.current()


def test_publish_200k_rows(url: str, store: RecommendationStore) -> None:
    n_users, k = 10_000, 20
    users = pl.Series(C.USER_ID, [f"u{u:05d}" for u in range(n_users)]).repeat_by(k).explode()
    ranks = pl.Series(C.RANK, list(range(1, k + 1)) * n_users)
    recs = pl.DataFrame({C.USER_ID: users, C.RANK: ranks}).with_columns(
        pl.format("{}-{}", C.USER_ID, C.RANK).alias(C.ITEM_ID),
        (1.0 / pl.col(C.RANK)).alias(C.SCORE),
        pl.lit("because you liked something similar").alias(C.REASON_TEXT),
        pl.lit("Some Title (1999)").alias(C.LABEL),
    )
    info = store.publish(recs, "big")

    assert (info.n_users, info.n_rows) == (n_users, n_users * k)
    assert _rows_per_batch(url) == {info.batch_id: 200_000}
    assert store.read("u09999")[C.RANK].to_list() == list(range(1, k + 1))
    assert store.users(limit=3) == ["u00000", "u00001", "u00002"]
