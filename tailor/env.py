"""Process environment for the embedded defaults (ephemeral Prefect API, local MLflow).

Called by the CLI and the test suite before Prefect is imported; never at import time. Values
the user already set are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path


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
