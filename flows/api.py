"""Prefect's temporary API, started early: importing this module does nothing else."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from tailor.env import seed_prefect_database, sqlite_database_path, tailor_cache_home

log = logging.getLogger(__name__)


def start_temporary_api() -> Callable[[], None]:
    """Start Prefect's temporary API server now, in the background; returns a wait for it.

    With no `PREFECT_API_URL` the first flow call starts a temporary server and waits for it
    (about 9 s on a fresh `PREFECT_HOME`, which it migrates). Started here instead, the server
    comes up while the caller imports the flows (torch, transformers, MLflow: about 5 s), and
    a new SQLite database starts as a copy of a migrated template (`seed_prefect_database`).
    Call the returned function before the first flow: the flow then finds the server running.
    A server that fails to start here is started again, with its error, by the flow.
    """
    from prefect.settings import PREFECT_API_URL, get_current_settings

    if PREFECT_API_URL.value():
        return lambda: None
    import prefect
    from prefect.server.api.server import SubprocessASGIServer

    url = get_current_settings().server.database.connection_url.get_secret_value()
    database = sqlite_database_path(url)
    server = SubprocessASGIServer()

    def start() -> None:
        if database is not None:
            try:
                seed_prefect_database(database, prefect.__version__, tailor_cache_home())
            except (OSError, RuntimeError, sqlite3.Error) as exc:
                # Not fatal: the server migrates the new database itself, only slower.
                log.warning("no migrated Prefect database template (%s); Prefect migrates", exc)
        server.start()

    starting = threading.Thread(target=start, name="tailor-prefect-api", daemon=True)
    starting.start()
    return starting.join
