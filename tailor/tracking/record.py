"""What one pipeline step leaves in MLflow, as data, and the one function that writes it.

Every stage result has a `record()` returning a `Record`; a flow logs a step with one call
(`log_record`), so what a run shows in the MLflow UI is decided next to the result it comes
from, not spread over the flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHILD_TAG = "tailor.child"


@dataclass
class Record:
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, dict[int, float]] = field(default_factory=dict)  # name -> step -> value
    artifacts: list[tuple[Path, str]] = field(default_factory=list)  # (file or folder, dir)
    tags: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)


@dataclass
class Child:
    """A run nested under the step's run (a baseline, a search trial, the production fit)."""

    name: str
    record: Record
    tags: dict[str, str] = field(default_factory=dict)


def log_record(client, run_id: str, record: Record) -> dict[str, str]:
    """Write `record` to run `run_id`; returns {child name: run id} for every child run.

    A retried flow run logs into the run it already has: params already there are kept, and a
    child run that exists (same name under the same parent) is reused, not duplicated.
    """
    # Imported here, not above: every stage result imports `Record`, and the stages' child
    # processes (tailor.stages.child) never log, so they need not import MLflow (about 1 s).
    from tailor.tracking.runs import log_artifact, log_metrics, log_params

    log_params(client, run_id, record.params)
    log_metrics(client, run_id, record.metrics)
    for name, values in record.series.items():
        for step, value in values.items():
            log_metrics(client, run_id, {name: value}, step=step)
    for path, artifact_dir in record.artifacts:
        log_artifact(client, run_id, path, artifact_dir)
    for key, value in record.tags.items():
        client.set_tag(run_id, key, value)
    ids: dict[str, str] = {}
    if record.children:
        parent = client.get_run(run_id)
        existing = {
            r.data.tags.get(CHILD_TAG): r.info.run_id
            for r in client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
            )
        }
        for child in record.children:
            child_id = existing.get(child.name)
            if child_id is None:
                child_id = client.create_run(
                    parent.info.experiment_id,
                    run_name=child.name,
                    tags={"mlflow.parentRunId": run_id, CHILD_TAG: child.name, **child.tags},
                ).info.run_id
            ids[child.name] = child_id
            ids.update(log_record(client, child_id, child.record))
            client.set_terminated(child_id)
    return ids
