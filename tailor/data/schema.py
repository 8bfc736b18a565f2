"""Versioned database schemas: a database made by an older tailor is brought up to date when
it is opened, and one made by a newer tailor is refused rather than misread.

Each component (the live log, the recommendation store) keeps its version in one shared
table, `tailor_schema`. Opening creates the tables that are missing (at the newest layout)
and then runs, in order, every migration newer than the version found. Migrations are
idempotent (they check before they create), so a fresh database can run them all. A
database that has the component's tables but no version row was made before versions were
kept: it is version 1, the layout the component first shipped with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Column, Connection, Engine, Integer, MetaData, String, Table, inspect, select
from sqlalchemy.exc import SQLAlchemyError

_VERSIONS = Table(
    "tailor_schema",
    MetaData(),
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
)


class SchemaError(RuntimeError):
    """A database this code cannot use as it is: made by a newer tailor, or unreadable."""


@dataclass(frozen=True)
class Migration:
    version: int  # the version this step brings the schema to
    summary: str  # what it changes, for the log and the error messages
    apply: Callable[[Connection], None]


def open_schema(
    engine: Engine,
    component: str,
    metadata: MetaData,
    migrations: Sequence[Migration],
    create: Callable[[Connection], None] | None = None,
) -> int:
    """Bring `component`'s tables in `engine` to the newest version (one transaction); returns
    the version found before (0 for a new database). `create` makes the missing tables (by
    default `metadata.create_all`); `migrations` are in ascending version order."""
    newest = migrations[-1].version if migrations else 1
    try:
        return _open(engine, component, metadata, migrations, newest, create)
    except SQLAlchemyError:
        # Another process may have created the same tables between the check and the CREATE.
        return _open(engine, component, metadata, migrations, newest, create)


def _open(engine, component, metadata, migrations, newest, create) -> int:
    with engine.begin() as conn:
        _VERSIONS.create(conn, checkfirst=True)
        found = conn.execute(
            select(_VERSIONS.c.version).where(_VERSIONS.c.component == component)
        ).scalar_one_or_none()
        if found is None:
            existing = set(inspect(conn).get_table_names())
            found = 1 if existing & set(metadata.tables) else 0
        if found > newest:
            raise SchemaError(
                f"the {component} at {engine.url.render_as_string(hide_password=True)} has "
                f"schema version {found}, made by a newer tailor; this one knows up to {newest}"
            )
        (create or metadata.create_all)(conn)
        for step in migrations:
            if step.version > found:
                step.apply(conn)
        if found != newest:
            conn.execute(_VERSIONS.delete().where(_VERSIONS.c.component == component))
            conn.execute(_VERSIONS.insert().values(component=component, version=newest))
        return found


def version_of(engine: Engine, component: str) -> int | None:
    """The version recorded for `component` (None: not recorded)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(_VERSIONS.name):
            return None
        return conn.execute(
            select(_VERSIONS.c.version).where(_VERSIONS.c.component == component)
        ).scalar_one_or_none()
