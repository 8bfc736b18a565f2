"""Process environment for the embedded defaults (ephemeral Prefect API, local MLflow).

Called by the CLI and the test suite before Prefect is imported; never at import time. Values
the user already set are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

_SQLITE_URL = "sqlite+aiosqlite:///"


def configure_environment(workdir: Path) -> dict[str, str]:
    """Set defaults for Prefect and MLflow under `workdir`; returns what was set."""
    workdir = Path(workdir).resolve()
    defaults = {
        # A project-local Prefect database, so runs show up in `prefect server start` later.
        "PREFECT_HOME": str(workdir / "prefect"),
        # First start on an empty PREFECT_HOME migrates the database: 20 s is not enough
        # on a busy 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # MLflow compares with "true"; Prefect accepts it too.
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # Library logs (tailor.*) appear in the Prefect UI next to the task logs.
        "PREFECT_LOGGING_EXTRA_LOGGERS": "tailor",
        "TOKENIZERS_PARALLELISM": "false",
    }
    applied = {}
    for key, value in defaults.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    # Prefect creates its home without parents and then cannot open its database.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    return applied


def tailor_cache_home() -> Path:
    """Where tailor keeps what outlives a workdir: `$TAILOR_CACHE_HOME`, else
    `$XDG_CACHE_HOME/tailor`, else `~/.cache/tailor`."""
    if os.environ.get("TAILOR_CACHE_HOME"):
        return Path(os.environ["TAILOR_CACHE_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tailor"


def sqlite_database_path(url: str) -> Path | None:
    """The file behind Prefect's `sqlite+aiosqlite:///...` database URL; None for any other
    database (PostgreSQL, in-memory, a URL with options)."""
    if not url.startswith(_SQLITE_URL) or "?" in url:
        return None
    path = url[len(_SQLITE_URL) :]
    return None if path in ("", ":memory:") else Path(path)


def seed_prefect_database(database: Path, prefect_version: str, cache_dir: Path) -> str:
    """Give a Prefect SQLite database that does not exist yet the migrated, empty schema.

    A new `PREFECT_HOME` otherwise costs every first run Prefect's migrations (about 34,000
    SQL statements: 6-10 s on two cores). They run once per Prefect version instead, into
    `cache_dir/prefect-<version>.db` (`prefect server database upgrade`, Prefect's own
    migration), and each new database is a copy of that file. Returns "exists" (nothing
    done), "copied", or "made" (the template was made first). Both files appear whole or not
    at all, so two runs starting at once are safe.
    """
    database = Path(database)
    if database.exists():
        return "exists"
    template = Path(cache_dir) / f"prefect-{prefect_version}.db"
    made = not template.is_file()
    if made:
        _migrate_template(template)
    database.parent.mkdir(parents=True, exist_ok=True)
    part = database.with_name(f".{database.name}.{os.getpid()}.part")
    try:
        _copy_sqlite(template, part)
        os.link(part, database)  # fails if the database appeared meanwhile: keep that one
    except FileExistsError:
        return "exists"
    finally:
        part.unlink(missing_ok=True)
    return "made" if made else "copied"


def _migrate_template(template: Path) -> None:
    template.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prefect-", dir=template.parent))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
        env["PREFECT_HOME"] = str(work)
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"{_SQLITE_URL}{work / 'prefect.db'}"
        cmd = [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"`prefect server database upgrade` failed (exit code {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-1000:]}"
            )
        part = work / "template.db"
        _copy_sqlite(work / "prefect.db", part)
        os.replace(part, template)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API (it reads a write-ahead log too), left
    in rollback-journal mode so that reading the copy later writes no side files (Prefect
    turns its own database back to WAL when it connects)."""
    with (
        contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
