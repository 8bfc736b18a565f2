"""The recommendation store: one published set of top-K lists, swapped atomically.

Every refresh writes its rows under a fresh ``batch_id`` while readers keep using the published
batch; only a final, short transaction flips which batch is published. A refresh that dies
half-way therefore leaves its rows under a batch nobody reads, and the next successful refresh
deletes them. The same SQLAlchemy Core code runs on SQLite (the default, one file) and PostgreSQL.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from tailor import columns as C
from tailor.data.schema import Migration, SchemaError, open_schema

__all__ = ["READ_SCHEMA", "BatchInfo", "RecommendationStore", "StoreError"]

_log = logging.getLogger(__name__)

WRITING = "writing"
PUBLISHED = "published"
RETIRED = "retired"
# A 'writing' batch older than a later successful publish: its refresh crashed or lost a race.
FAILED = "failed"

_BATCH_ID = "batch_id"
# Long enough to ride out the commit of a big chunk; readers in WAL mode rarely wait at all.
_SQLITE_BUSY_TIMEOUT_MS = 30_000

_METADATA = MetaData()

_BATCHES = Table(
    "batches",
    _METADATA,
    Column(_BATCH_ID, String(32), primary_key=True),
    Column(C.MODEL_VERSION, String(), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("n_users", Integer, nullable=False),
    Column("n_rows", Integer, nullable=False),
    Column("extra", Text, nullable=True),
)

# At most one published batch, enforced by the database itself: on PostgreSQL two overlapping
# publishes cannot both see "no other published batch" under READ COMMITTED, so the loser must
# fail on this index instead of leaving two published sets for readers to mix.
_ONE_PUBLISHED = Index(
    "uq_batches_one_published",
    _BATCHES.c.status,
    unique=True,
    sqlite_where=_BATCHES.c.status == PUBLISHED,
    postgresql_where=_BATCHES.c.status == PUBLISHED,
).ddl_if(dialect=("sqlite", "postgresql"))

_RECS = Table(
    "recommendations",
    _METADATA,
    Column(_BATCH_ID, String(32), nullable=False),
    Column(C.USER_ID, String(), nullable=False),
    Column(C.RANK, Integer, nullable=False),
    Column(C.ITEM_ID, String(), nullable=False),
    Column(C.SCORE, Float, nullable=False),
    Column(C.REASON_TEXT, Text, nullable=True),
    Column(C.LABEL, Text, nullable=True),
    # batch first: a read is one index range (published batch, user), and cleanup deletes a range.
    PrimaryKeyConstraint(_BATCH_ID, C.USER_ID, C.RANK, name="pk_recommendations"),
    # Clustered on the key: no separate rowid table, so ~20% smaller and faster to fill.
    sqlite_with_rowid=False,
    # One partition per batch on PostgreSQL: a refresh fills its own table, and removing an
    # old batch is dropping a table, not deleting (and later vacuuming) millions of rows.
    postgresql_partition_by=f"LIST ({_BATCH_ID})",
)
# Readers waiting on a dropped partition's lock would queue behind it: give up and retry later.
_DROP_LOCK_TIMEOUT = "2s"

# The store's schema versions (`tailor.data.schema`): 1 is the layout first shipped.
MIGRATIONS = [
    Migration(1, "batches and recommendations", lambda conn: None),
    Migration(
        2,
        "at most one published batch, enforced by a partial unique index",
        lambda conn: _ONE_PUBLISHED.create(conn, checkfirst=True),
    ),
]

_INPUT_COLUMNS = (C.USER_ID, C.ITEM_ID, C.RANK, C.SCORE, C.REASON_TEXT, C.LABEL)
_REQUIRED_VALUES = (C.USER_ID, C.ITEM_ID, C.RANK, C.SCORE)

READ_SCHEMA: dict[str, pl.DataType] = {
    C.USER_ID: pl.String(),
    C.ITEM_ID: pl.String(),
    C.RANK: pl.Int64(),
    C.SCORE: pl.Float64(),
    C.REASON_TEXT: pl.String(),
    C.LABEL: pl.String(),
    C.MODEL_VERSION: pl.String(),
}


class StoreError(RuntimeError):
    """Invalid input to the store, or a database failure while using it."""


@dataclass(frozen=True)
class BatchInfo:
    """One refresh's set of recommendations, as recorded in the ``batches`` table."""

    batch_id: str
    model_version: str
    created_at: datetime
    n_users: int
    n_rows: int
    status: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


class RecommendationStore:
    """Publishes and reads per-user recommendation lists at a SQLAlchemy URL.

    Nothing touches the database until the first call; then the tables are created if absent.
    """

    def __init__(self, url: str, timeout_seconds: float | None = None) -> None:
        self._url = make_url(url)
        # A bound on every wait in the database (a lock, a slow statement, a connection):
        # None waits as long as the backend does (a refresh), a service sets seconds.
        self._timeout = timeout_seconds
        self._engine: Engine | None = None
        self._is_partitioned: bool | None = None
        # Readers in a web service may hit a fresh store from several threads at once.
        self._engine_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RecommendationStore({self._safe_url!r})"

    def __enter__(self) -> RecommendationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    @property
    def _safe_url(self) -> str:
        return self._url.render_as_string(hide_password=True)

    # writing

    def publish(
        self,
        recs: pl.DataFrame,
        model_version: str,
        chunk_rows: int = 50_000,
        extra: dict[str, Any] | None = None,
    ) -> BatchInfo:
        """Write ``recs`` as a new batch and make it the one readers see, all or nothing.

        Until the final switch, readers keep getting the previous batch. If anything fails before
        it, this raises and the previous batch stays published; the partial rows are removed by
        the next successful publish. Cleanup after the switch never undoes it: a failure there is
        logged and retried by the next publish.
        """
        # Checked and sorted once, here, so bad input is refused before anything is written.
        return self._publish([_prepare(recs)], model_version, chunk_rows, extra)

    def publish_parts(
        self,
        parts: Iterable[pl.DataFrame | Path],
        model_version: str,
        chunk_rows: int = 50_000,
        extra: dict[str, Any] | None = None,
    ) -> BatchInfo:
        """`publish` for lists written in parts (frames or Parquet files, one per block of
        users), read one part at a time so memory holds one part, published as one batch.

        Each user's list must sit in one part; a user found in two parts fails the publish.
        """
        prepared = (_prepare(_read_part(part)) for part in parts)
        return self._publish(prepared, model_version, chunk_rows, extra)

    def _publish(
        self,
        frames: Iterable[pl.DataFrame],
        model_version: str,
        chunk_rows: int,
        extra: dict[str, Any] | None,
    ) -> BatchInfo:
        """Frames already checked and sorted by `_prepare`, written as one batch."""
        if not isinstance(model_version, str) or not model_version.strip():
            raise StoreError("model_version must be a non-empty string")
        if chunk_rows < 1:
            raise StoreError(f"chunk_rows must be at least 1, got {chunk_rows}")
        extra = dict(extra or {})
        try:
            extra_json = json.dumps(extra, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise StoreError(f"extra is not JSON-serialisable: {e}") from e

        engine = self._get_engine()
        batch_id = uuid.uuid4().hex
        created_at = datetime.now(UTC)
        n_rows = n_users = 0
        with self._db_errors("publish recommendations"):
            with engine.begin() as conn:
                conn.execute(
                    insert(_BATCHES).values(
                        batch_id=batch_id,
                        model_version=model_version,
                        created_at=created_at,
                        status=WRITING,
                        n_users=0,
                        n_rows=0,
                        extra=extra_json,
                    )
                )
            if self._partitioned(engine):
                with engine.begin() as conn:
                    conn.exec_driver_sql(
                        f"CREATE TABLE {_partition(batch_id)} PARTITION OF {_RECS.name} "
                        f"FOR VALUES IN ('{batch_id}')"
                    )
            with engine.connect() as conn:
                last_user: str | None = None
                for frame in frames:
                    # Parts are sorted by user; users of one part all sort after the last one's
                    # (blocks are ranges of sorted ids), so a user split over two parts shows.
                    first = frame[C.USER_ID][0]
                    if last_user is not None and first <= last_user:
                        raise StoreError(
                            f"parts overlap or are out of order: user {first!r} follows "
                            f"{last_user!r}; nothing was published"
                        )
                    last_user = frame[C.USER_ID][-1]
                    n_rows += frame.height
                    n_users += frame[C.USER_ID].n_unique()
                    rows = frame.with_columns(pl.lit(batch_id).alias(_BATCH_ID))
                    for chunk in rows.iter_slices(n_rows=chunk_rows):
                        # One transaction per chunk keeps the write lock and the journal bounded.
                        with conn.begin():
                            self._insert_chunk(conn, chunk)
            if n_rows == 0:
                # An empty refresh is an upstream bug; publishing it would wipe every list.
                raise StoreError("refusing to publish an empty set of recommendations")
            with engine.begin() as conn:
                self._switch(conn, batch_id, n_rows, n_users)
        info = BatchInfo(batch_id, model_version, created_at, n_users, n_rows, PUBLISHED, extra)
        _log.info(
            "published batch %s (%s): %d rows for %d users",
            batch_id,
            model_version,
            n_rows,
            n_users,
        )
        try:
            self._cleanup(engine, info)
        except Exception:
            _log.warning(
                "published batch %s, but removing old rows failed; the next publish retries",
                batch_id,
                exc_info=True,
            )
        return info

    def _insert_chunk(self, conn: Connection, chunk: pl.DataFrame) -> None:
        if conn.dialect.name == "sqlite":
            # Core builds and checks a parameter dict per row, which costs twice what SQLite
            # spends inserting it; the compiled statement with plain tuples skips that.
            compiled = insert(_RECS).compile(dialect=conn.dialect, column_keys=chunk.columns)
            order = compiled.positiontup or chunk.columns
            conn.exec_driver_sql(str(compiled), chunk.select(order).rows())
        elif conn.dialect.driver == "psycopg2":
            # COPY streams the rows in one command: ~10x faster than multi-row INSERTs.
            _copy_chunk(conn, chunk)
        else:
            # Core's insertmanyvalues batches rows into multi-row VALUES on other drivers.
            conn.execute(insert(_RECS), chunk.to_dicts())

    @staticmethod
    def _switch(conn: Connection, batch_id: str, n_rows: int, n_users: int) -> None:
        # Retire first so the one-published index never sees two; the UPDATE also takes the
        # write lock before any read here, so SQLite cannot fail to upgrade a read snapshot.
        conn.execute(update(_BATCHES).where(_BATCHES.c.status == PUBLISHED).values(status=RETIRED))
        flipped = conn.execute(
            update(_BATCHES)
            .where(_BATCHES.c.batch_id == batch_id, _BATCHES.c.status == WRITING)
            .values(status=PUBLISHED, n_rows=n_rows, n_users=n_users)
        )
        if flipped.rowcount != 1:
            raise StoreError(
                f"batch {batch_id} is no longer being written (a concurrent refresh marked it "
                "failed); nothing was published"
            )
        # A concurrent cleanup can delete rows of a batch it took for crashed; never publish
        # a set that is not complete.
        stored = conn.execute(
            select(func.count()).select_from(_RECS).where(_RECS.c.batch_id == batch_id)
        ).scalar_one()
        if stored != n_rows:
            raise StoreError(
                f"batch {batch_id} holds {stored} rows, expected {n_rows}; nothing was published"
            )

    def _cleanup(self, engine: Engine, published: BatchInfo) -> None:
        # Only batches started before ours count as abandoned; a refresh started later may still
        # be writing. An older one still running loses: its own switch then refuses to publish.
        with engine.begin() as conn:
            conn.execute(
                update(_BATCHES)
                .where(
                    _BATCHES.c.status == WRITING,
                    _BATCHES.c.batch_id != published.batch_id,
                    _BATCHES.c.created_at < published.created_at,
                )
                .values(status=FAILED)
            )
        with engine.connect() as conn:
            dead = (
                conn.execute(
                    select(_BATCHES.c.batch_id).where(_BATCHES.c.status.in_((RETIRED, FAILED)))
                )
                .scalars()
                .all()
            )
        # Every dead batch, not just the one retired now, so a cleanup that failed last time is
        # finished here; an already-empty batch costs one index probe (or one DROP IF EXISTS).
        partitioned = self._partitioned(engine)
        for batch_id in dead:
            with engine.begin() as conn:
                if partitioned:
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_DROP_LOCK_TIMEOUT}'")
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_partition(batch_id)}")
                    continue
                gone = conn.execute(delete(_RECS).where(_RECS.c.batch_id == batch_id)).rowcount
            if gone:
                _log.info("removed %d rows of old batch %s", gone, batch_id)

    def _partitioned(self, engine: Engine) -> bool:
        """Whether the recommendations table is partitioned by batch (PostgreSQL, made by this
        version; a table made before partitioning keeps working by DELETE)."""
        if self._is_partitioned is None:
            self._is_partitioned = False
            if engine.dialect.name == "postgresql":
                with engine.connect() as conn:
                    kind = conn.exec_driver_sql(
                        "SELECT relkind FROM pg_class WHERE oid = to_regclass(%(name)s)",
                        {"name": _RECS.name},
                    ).scalar()
                self._is_partitioned = kind == "p"
        return self._is_partitioned

    # reading

    def current(self) -> BatchInfo | None:
        """The published batch, or None before the first publish."""
        with self._db_errors("read the current batch"), self._get_engine().connect() as conn:
            row = conn.execute(
                select(_BATCHES)
                .where(_BATCHES.c.status == PUBLISHED)
                .order_by(_BATCHES.c.created_at.desc())
                .limit(1)
            ).first()
        return None if row is None else _batch_info(row)

    def read(self, user_id: str, limit: int | None = None) -> pl.DataFrame:
        """One user's list from the published batch, best first; empty for an unknown user.

        Columns: user_id, item_id, rank, score, reason, label, model_version.
        """
        _check_limit(limit)
        # One statement is one snapshot on both backends, so a publish landing mid-read cannot
        # mix two batches; the scalar subquery pins exactly one batch even on a backend
        # without the one-published index.
        stmt = (
            select(
                _RECS.c[C.USER_ID],
                _RECS.c[C.ITEM_ID],
                _RECS.c[C.RANK],
                _RECS.c[C.SCORE],
                _RECS.c[C.REASON_TEXT],
                _RECS.c[C.LABEL],
                _BATCHES.c[C.MODEL_VERSION],
            )
            .select_from(_RECS.join(_BATCHES, _RECS.c.batch_id == _BATCHES.c.batch_id))
            .where(_RECS.c.batch_id == _published_batch_id(), _RECS.c[C.USER_ID] == str(user_id))
            .order_by(_RECS.c[C.RANK])
            .limit(limit)
        )
        with self._db_errors("read recommendations"), self._get_engine().connect() as conn:
            rows = conn.execute(stmt).all()
        return pl.DataFrame([tuple(r) for r in rows], schema=READ_SCHEMA, orient="row")

    def users(self, limit: int | None = None) -> list[str]:
        """User ids in the published batch, sorted as strings."""
        _check_limit(limit)
        stmt = (
            select(_RECS.c[C.USER_ID])
            .where(_RECS.c.batch_id == _published_batch_id())
            .distinct()
            .order_by(_RECS.c[C.USER_ID])
            .limit(limit)
        )
        with self._db_errors("list users"), self._get_engine().connect() as conn:
            return list(conn.execute(stmt).scalars().all())

    def history(self, limit: int = 20) -> list[BatchInfo]:
        """Batches of every status, newest first."""
        _check_limit(limit)
        stmt = (
            select(_BATCHES)
            .order_by(_BATCHES.c.created_at.desc(), _BATCHES.c.batch_id)
            .limit(limit)
        )
        with self._db_errors("read the batch history"), self._get_engine().connect() as conn:
            return [_batch_info(row) for row in conn.execute(stmt)]

    def dispose(self) -> None:
        """Close pooled connections; the store reconnects if used again."""
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
            self._is_partitioned = None

    # plumbing

    def _get_engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                with self._db_errors("open the store"):
                    self._engine = self._create_engine()
            return self._engine

    def _create_engine(self) -> Engine:
        is_sqlite = self._url.get_backend_name() == "sqlite"
        if is_sqlite:
            database = self._url.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                try:
                    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise StoreError(f"cannot create the directory for {database}: {e}") from e
        connect_args: dict[str, Any] = {}
        busy_ms = _SQLITE_BUSY_TIMEOUT_MS
        if self._timeout is not None:
            busy_ms = max(1, int(self._timeout * 1000))
            if self._url.get_backend_name() == "postgresql":
                connect_args = {
                    "connect_timeout": max(1, math.ceil(self._timeout)),
                    "options": f"-c statement_timeout={busy_ms} -c lock_timeout={busy_ms}",
                }
        engine = create_engine(self._url, connect_args=connect_args)
        if is_sqlite:
            event.listen(engine, "connect", partial(_configure_sqlite, busy_ms=busy_ms))
        try:
            open_schema(engine, "recommendation store", _METADATA, MIGRATIONS)
        except SchemaError as e:
            raise StoreError(str(e)) from e
        return engine

    @contextmanager
    def _db_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as e:
            cause = getattr(e, "orig", None) or e
            raise StoreError(f"could not {action} at {self._safe_url}: {cause}") from e


def _configure_sqlite(dbapi_conn: Any, _record: Any, busy_ms: int) -> None:
    cursor = dbapi_conn.cursor()
    try:
        # busy_timeout first, so switching to WAL waits for a lock instead of failing.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        # WAL lets readers keep reading the published batch while a refresh writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        # Safe in WAL (a crash loses at most the last commits, never consistency), and the
        # store is rebuilt nightly anyway; it makes the per-chunk commits cheap.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _partition(batch_id: str) -> str:
    if not batch_id.isalnum():  # batch ids are uuid hex; never let anything else into DDL
        raise StoreError(f"invalid batch id {batch_id!r}")
    return f"{_RECS.name}_{batch_id}"


def _read_part(part: pl.DataFrame | Path) -> pl.DataFrame:
    if isinstance(part, pl.DataFrame):
        return part
    try:
        return pl.read_parquet(part)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise StoreError(f"cannot read the part {part}: {e}") from e


def _copy_chunk(conn: Connection, chunk: pl.DataFrame) -> None:
    order = [c.name for c in _RECS.columns]
    buffer = io.BytesIO()
    # CSV through COPY: an unquoted empty field is NULL, a quoted one ("") the empty string.
    chunk.select(order).write_csv(buffer, include_header=False, quote_style="non_numeric")
    buffer.seek(0)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.copy_expert(
            f"COPY {_RECS.name} ({', '.join(order)}) FROM STDIN WITH (FORMAT csv)", buffer
        )
    except conn.dialect.loaded_dbapi.Error as e:
        if "no partition" in str(e):
            # A later refresh took this one for crashed and dropped its partition.
            raise StoreError(
                f"batch {chunk[_BATCH_ID][0]} is no longer being written (a concurrent refresh "
                "marked it failed and removed its rows); nothing was published"
            ) from e
        raise StoreError(f"could not COPY recommendations: {e}") from e
    finally:
        cursor.close()


def _published_batch_id() -> Any:
    return (
        select(_BATCHES.c.batch_id)
        .where(_BATCHES.c.status == PUBLISHED)
        .order_by(_BATCHES.c.created_at.desc())
        .limit(1)
        .scalar_subquery()
    )


def _prepare(recs: pl.DataFrame) -> pl.DataFrame:
    if not isinstance(recs, pl.DataFrame):
        raise StoreError(f"recommendations must be a polars DataFrame, got {type(recs).__name__}")
    for name in _INPUT_COLUMNS:
        if name not in recs.columns:
            raise StoreError(f"recommendations lack the column {name!r}")
    if recs.is_empty():
        # An empty refresh is an upstream bug; publishing it would wipe every user's list.
        raise StoreError("refusing to publish an empty set of recommendations")
    try:
        frame = recs.select(
            pl.col(C.USER_ID).cast(pl.String),
            pl.col(C.ITEM_ID).cast(pl.String),
            pl.col(C.RANK).cast(pl.Int64),
            pl.col(C.SCORE).cast(pl.Float64),
            pl.col(C.REASON_TEXT).cast(pl.String),
            pl.col(C.LABEL).cast(pl.String),
        )
    except pl.exceptions.PolarsError as e:
        raise StoreError(f"recommendations have a column of the wrong type: {e}") from e
    for name in _REQUIRED_VALUES:
        if frame[name].null_count():
            raise StoreError(f"column {name!r} has {frame[name].null_count()} missing values")
    # SQLite stores NaN as NULL, which the NOT NULL score would reject half-way through.
    if frame[C.SCORE].is_nan().any():
        raise StoreError(f"column {C.SCORE!r} has NaN values")
    if frame[C.RANK].min() < 1:  # type: ignore[operator]
        raise StoreError(f"column {C.RANK!r} must be 1-based, found {frame[C.RANK].min()}")
    dups = frame.group_by(C.USER_ID, C.RANK).len().filter(pl.col("len") > 1)
    if dups.height:
        first = dups.row(0, named=True)
        raise StoreError(
            f"{dups.height} duplicate ({C.USER_ID}, {C.RANK}) pairs, e.g. "
            f"user {first[C.USER_ID]!r} rank {first[C.RANK]}"
        )
    # Inserting in primary-key order keeps the B-tree appends local, which is much faster.
    return frame.sort(C.USER_ID, C.RANK)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise StoreError(f"limit must be at least 1, got {limit}")


def _batch_info(row: Any) -> BatchInfo:
    created_at: datetime = row.created_at
    # SQLite hands back naive datetimes; they were written as UTC.
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return BatchInfo(
        batch_id=row.batch_id,
        model_version=row.model_version,
        created_at=created_at,
        n_users=row.n_users,
        n_rows=row.n_rows,
        status=row.status,
        extra=json.loads(row.extra) if row.extra else {},
    )
