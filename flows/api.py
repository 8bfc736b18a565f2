"""Prefect's temporary API, started early: importing this module does nothing else."""

from __future__ import annotations

import threading
from collections.abc import Callable


def start_temporary_api() -> Callable[[], None]:
    """Start Prefect's temporary API server now, in the background; returns a wait for it.

    With no `PREFECT_API_URL` the first flow call starts a temporary server and waits for it
    (about 9 s on a fresh `PREFECT_HOME`, which it migrates). Started here instead, the server
    comes up while the caller imports the flows (torch, transformers, MLflow: about 5 s).
    Call the returned function before the first flow: the flow then finds the server running.
    A server that fails to start here is started again, with its error, by the flow.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return lambda: None
    from prefect.server.api.server import SubprocessASGIServer

    starting = threading.Thread(
        target=SubprocessASGIServer().start, name="tailor-prefect-api", daemon=True
    )
    starting.start()
    return starting.join
