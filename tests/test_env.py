"""Process environment: Prefect's database template and where tailor's own cache is."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tailor.env import seed_prefect_database, sqlite_database_path, tailor_cache_home


def test_sqlite_database_path_reads_only_plain_sqlite_urls():
    url = "sqlite+aiosqlite:////tmp/h/prefect.db"
    assert sqlite_database_path(url) == Path("/tmp/h/prefect.db")
    assert sqlite_database_path("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_database_path("sqlite+aiosqlite:////tmp/p.db?mode=ro") is None
    assert sqlite_database_path("postgresql+asyncpg://u:secret@db/prefect") is None


def test_tailor_cache_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TAILOR_CACHE_HOME", str(tmp_path / "mine"))
    assert tailor_cache_home() == tmp_path / "mine"
    monkeypatch.delenv("TAILOR_CACHE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tailor_cache_home() == tmp_path / "xdg" / "tailor"


def _database_with(path: Path, marker: str) -> None:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE marker (name TEXT)")
        con.execute("INSERT INTO marker VALUES (?)", (marker,))
    con.close()


def _marker(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT name FROM marker").fetchone()[0]
    finally:
        con.close()


def test_a_new_database_is_a_copy_of_the_template_and_an_old_one_is_kept(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _database_with(cache / "prefect-9.9.9.db", "template")
    database = tmp_path / "home" / "prefect.db"
    assert seed_prefect_database(database, "9.9.9", cache) == "copied"
    assert _marker(database) == "template"
    # Nothing half-written is left beside it, and the copy writes no journal files.
    assert sorted(p.name for p in database.parent.iterdir()) == ["prefect.db"]
    # A database that exists is never touched.
    mine = tmp_path / "mine.db"
    _database_with(mine, "mine")
    assert seed_prefect_database(mine, "9.9.9", cache) == "exists"
    assert _marker(mine) == "mine"


def test_a_template_that_is_not_a_database_fails_and_leaves_no_database(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "prefect-9.9.9.db").write_bytes(b"not a database at all" * 100)
    database = tmp_path / "home" / "prefect.db"
    with pytest.raises(sqlite3.DatabaseError):
        seed_prefect_database(database, "9.9.9", cache)
    assert not database.exists()
    assert list(database.parent.iterdir()) == []
