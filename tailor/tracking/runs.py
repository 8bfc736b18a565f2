"""MLflow bookkeeping with explicit run ids.

`mlflow.active_run()` is thread-local and Prefect may run tasks in worker threads, so nothing
here relies on an active run: every call names the run it writes to.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

log = logging.getLogger(__name__)

FLOW_RUN_TAG = "prefect.flow_run_id"


def client_for(tracking_uri: str):
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(client, name: str, artifact_root: str | None) -> str:
    """Create the experiment with an absolute artifact location, so runs do not depend on cwd
    (None: the tracking server's default, e.g. its S3 bucket)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if artifact_root is None:
        return client.create_experiment(name)
    location = f"{artifact_root.rstrip('/')}/{name}"
    return client.create_experiment(name, artifact_location=location)


def start_or_resume_run(
    client,
    experiment_id: str,
    flow_run_id: str | None,
    run_name: str,
    tags: Mapping[str, str] | None = None,
) -> str:
    """One MLflow run per Prefect flow run: a retried flow run reuses the run it started."""
    tags = dict(tags or {})
    if flow_run_id:
        tags[FLOW_RUN_TAG] = flow_run_id
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'"
        )
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            log.info("resuming MLflow run %s of flow run %s", run_id, flow_run_id)
            return run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    return run.info.run_id


def finish_run(client, run_id: str, ok: bool) -> None:
    client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, "None" if v is None else str(v)[:6000]) for k, v in params.items()]
    existing = client.get_run(run_id).data.params
    # A resumed run already has its params; MLflow refuses to change a logged value.
    items = [p for p in items if p.key not in existing]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(
    client, run_id: str, metrics: Mapping[str, float], step: int | None = None, prefix: str = ""
) -> None:
    now = int(time.time() * 1000)
    items = [
        Metric(f"{prefix}{k}", float(v), now, step or 0)
        for k, v in metrics.items()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[start : start + 500])


def log_artifact(client, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)
