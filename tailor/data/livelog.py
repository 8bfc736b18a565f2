"""The live log: items and feedback events the service received since the last training data.

The service appends here, one committed transaction per request, before it answers; the next
nightly run reads everything back, cleans it like any other input and trains on it. Nothing is
ever deleted: the log is a source of data, as the interactions file is. The same SQLAlchemy
Core code runs on SQLite (the default, one file in the workdir) and PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
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
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tailor import columns as C
from tailor.data.schema import Migration, SchemaError, open_schema

__all__ = ["EVENT_KINDS", "LiveEvent", "LiveItem", "LiveLog", "LiveLogError"]

EVENT_KINDS = ("view", "click", "rating")
KIND = "kind"
ORIGIN = "origin"

_METADATA = MetaData()

_ITEMS = Table(
    "live_items",
    _METADATA,
    Column(C.ITEM_ID, String(), primary_key=True),
    Column(C.TEXT, Text, nullable=False),
    Column(C.LABEL, Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column(ORIGIN, String(64), nullable=True),  # the process that wrote the latest text
)

_EVENTS = Table(
    "live_events",
    _METADATA,
    Column("event_id", Integer, primary_key=True, autoincrement=True),
    Column(C.USER_ID, String(), nullable=False),
    Column(C.ITEM_ID, String(), nullable=False),
    Column(KIND, String(16), nullable=False),
    Column(C.WEIGHT, Float, nullable=False),
    Column(C.TIMESTAMP, DateTime(timezone=True), nullable=False),
    # Which service process wrote the event: replicas sharing the log follow each other's.
    Column(ORIGIN, String(64), nullable=True),
)
# One user's events are read back when a user evicted from memory returns.
_BY_USER = Index("live_events_by_user", _EVENTS.c[C.USER_ID])


def _add_origin(conn) -> None:
    for table in (_ITEMS.name, _EVENTS.name):
        if ORIGIN not in {c["name"] for c in inspect(conn).get_columns(table)}:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {ORIGIN} VARCHAR(64)"))


# The live log's schema versions (`tailor.data.schema`): 1 is the layout first shipped.
MIGRATIONS = [
    Migration(1, "live_items and live_events", lambda conn: None),
    Migration(
        2,
        "the index of events by user (restoring an evicted user read the whole table)",
        lambda conn: _BY_USER.create(conn, checkfirst=True),
    ),
    Migration(3, "origin: the process that wrote an event or an item's text", _add_origin),
]


class LiveLogError(RuntimeError):
    """The live log could not be read or written."""


@dataclass(frozen=True)
class LiveItem:
    item_id: str
    text: str
    label: str


@dataclass(frozen=True)
class LiveEvent:
    user_id: str
    item_id: str
    kind: str
    weight: float
    timestamp: datetime


class LiveLog:
    """Append-only items and events at a SQLAlchemy URL; tables are created on first write."""

    def __init__(self, url: str) -> None:
        self._url = make_url(url)
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._upsert: Any = None

    def __repr__(self) -> str:
        return f"LiveLog({self._url.render_as_string(hide_password=True)!r})"

    def exists(self) -> bool:
        """False for a SQLite file never written: readers must not create one."""
        if self._url.get_backend_name() != "sqlite":
            return True
        database = self._url.database or ""
        return database in ("", ":memory:") or Path(database).expanduser().is_file()

    def upsert_items(self, items: Sequence[LiveItem], origin: str | None = None) -> None:
        """Insert new items and replace the text and label of known ones, all or nothing;
        `origin` as for `append_events`."""
        if not items:
            return
        now = datetime.now(UTC)
        rows = [
            {
                C.ITEM_ID: i.item_id,
                C.TEXT: i.text,
                C.LABEL: i.label,
                "updated_at": now,
                ORIGIN: origin,
            }
            for i in items
        ]
        engine = self._get_engine()
        if self._upsert is None:
            make = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
            stmt = make(_ITEMS)
            # Built once, with only `excluded` references: SQLAlchemy caches its compiled form.
            self._upsert = stmt.on_conflict_do_update(
                index_elements=[C.ITEM_ID],
                set_={
                    C.TEXT: stmt.excluded[C.TEXT],
                    C.LABEL: stmt.excluded[C.LABEL],
                    "updated_at": stmt.excluded["updated_at"],
                    ORIGIN: stmt.excluded[ORIGIN],
                },
            )
        with self._errors("write items"), engine.begin() as conn:
            conn.execute(self._upsert, rows)

    def append_events(self, events: Sequence[LiveEvent], origin: str | None = None) -> None:
        """Append events in one transaction: all are durable when this returns, or none.
        `origin` names the writing process, so that other processes following the log
        (`events_after`) apply them and it does not apply its own twice."""
        if not events:
            return
        rows = [
            {
                C.USER_ID: e.user_id,
                C.ITEM_ID: e.item_id,
                KIND: e.kind,
                C.WEIGHT: float(e.weight),
                C.TIMESTAMP: e.timestamp,
                ORIGIN: origin,
            }
            for e in events
        ]
        with self._errors("append events"), self._get_engine().begin() as conn:
            conn.execute(insert(_EVENTS), rows)

    def items(self) -> pl.DataFrame:
        """Every live item: item_id, text, label (empty frame when the log does not exist)."""
        schema = {C.ITEM_ID: pl.Utf8, C.TEXT: pl.Utf8, C.LABEL: pl.Utf8}
        if not self.exists():
            return pl.DataFrame(schema=schema)
        stmt = select(_ITEMS.c[C.ITEM_ID], _ITEMS.c[C.TEXT], _ITEMS.c[C.LABEL]).order_by(
            _ITEMS.c[C.ITEM_ID]
        )
        with self._errors("read items"), self._get_engine().connect() as conn:
            rows = [tuple(r) for r in conn.execute(stmt)]
        return pl.DataFrame(rows, schema=schema, orient="row")

    def events(self) -> pl.DataFrame:
        """Every event in arrival order: user_id, item_id, kind, weight, timestamp (UTC)."""
        schema = {
            C.USER_ID: pl.Utf8,
            C.ITEM_ID: pl.Utf8,
            KIND: pl.Utf8,
            C.WEIGHT: pl.Float64,
            C.TIMESTAMP: pl.Datetime("us", "UTC"),
        }
        if not self.exists():
            return pl.DataFrame(schema=schema)
        stmt = select(
            _EVENTS.c[C.USER_ID],
            _EVENTS.c[C.ITEM_ID],
            _EVENTS.c[KIND],
            _EVENTS.c[C.WEIGHT],
            _EVENTS.c[C.TIMESTAMP],
        ).order_by(_EVENTS.c.event_id)
        with self._errors("read events"), self._get_engine().connect() as conn:
            rows = [
                (u, i, k, w, t if t.tzinfo else t.replace(tzinfo=UTC))
                for u, i, k, w, t in conn.execute(stmt)
            ]
        return pl.DataFrame(rows, schema=schema, orient="row")

    def events_of(self, user_id: str) -> list[tuple[str, float]]:
        """One user's events in arrival order: (item_id, weight)."""
        if not self.exists():
            return []
        stmt = (
            select(_EVENTS.c[C.ITEM_ID], _EVENTS.c[C.WEIGHT])
            .where(_EVENTS.c[C.USER_ID] == user_id)
            .order_by(_EVENTS.c.event_id)
        )
        with self._errors("read a user's events"), self._get_engine().connect() as conn:
            return [(item, float(weight)) for item, weight in conn.execute(stmt)]

    def last_event_id(self) -> int:
        """The newest event's id (0 for an empty or absent log): where following starts."""
        if not self.exists():
            return 0
        with self._errors("read the newest event"), self._get_engine().connect() as conn:
            return int(conn.execute(select(func.max(_EVENTS.c.event_id))).scalar() or 0)

    def events_after(
        self, event_id: int, skip_origin: str | None = None, limit: int = 10_000
    ) -> list[tuple[int, str, str, float]]:
        """(event_id, user_id, item_id, weight) of events after `event_id`, oldest first, but
        those written by `skip_origin` (the caller's own, applied when it wrote them)."""
        if not self.exists():
            return []
        e = _EVENTS.c
        stmt = select(e.event_id, e[C.USER_ID], e[C.ITEM_ID], e[C.WEIGHT]).where(
            e.event_id > event_id
        )
        if skip_origin is not None:
            stmt = stmt.where((e[ORIGIN].is_(None)) | (e[ORIGIN] != skip_origin))
        stmt = stmt.order_by(e.event_id).limit(limit)
        with self._errors("follow events"), self._get_engine().connect() as conn:
            return [(int(i), u, it, float(w)) for i, u, it, w in conn.execute(stmt)]

    def items_since(
        self, when: datetime, skip_origin: str | None = None
    ) -> list[tuple[LiveItem, datetime]]:
        """Items inserted or changed at or after `when`, with their time, oldest first, but
        those whose latest text `skip_origin` wrote."""
        if not self.exists():
            return []
        i = _ITEMS.c
        stmt = select(i[C.ITEM_ID], i[C.TEXT], i[C.LABEL], i.updated_at).where(i.updated_at >= when)
        if skip_origin is not None:
            stmt = stmt.where((i[ORIGIN].is_(None)) | (i[ORIGIN] != skip_origin))
        stmt = stmt.order_by(i.updated_at)
        with self._errors("follow items"), self._get_engine().connect() as conn:
            return [
                (LiveItem(i, t, lab), at if at.tzinfo else at.replace(tzinfo=UTC))
                for i, t, lab, at in conn.execute(stmt)
            ]

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def _get_engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                with self._errors("open the live log"):
                    if self._url.get_backend_name() == "sqlite" and self._url.database:
                        Path(self._url.database).expanduser().parent.mkdir(
                            parents=True, exist_ok=True
                        )
                    engine = create_engine(self._url)
                    if engine.dialect.name == "sqlite":
                        event.listen(engine, "connect", _configure_sqlite)
                    try:
                        open_schema(engine, "live log", _METADATA, MIGRATIONS)
                    except SchemaError as e:
                        raise LiveLogError(str(e)) from e
                    self._engine = engine
            return self._engine

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as e:
            cause = getattr(e, "orig", None) or e
            raise LiveLogError(f"could not {action} in the live log {self!r}: {cause}") from e


def _configure_sqlite(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=30000")
        # WAL: the nightly run reads while the service writes. FULL: a committed event
        # survives a power cut, not only a crash of the service.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()
