"""Glue every flow shares: resolving settings and one MLflow run per Prefect flow run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.runtime import flow_run

from tailor.settings import Settings, load_settings
from tailor.tracking import client_for, ensure_experiment, finish_run, start_or_resume_run


def resolve_settings(settings: Settings | None, preset: str | None, config: str | None) -> Settings:
    if settings is not None:
        return settings
    return load_settings(Path(config) if config else None, preset=preset)


@contextmanager
def tracked_run(settings: Settings, experiment: str, run_name: str) -> Iterator[tuple[object, str]]:
    """Create (or, for a retried flow run, reuse) the MLflow run and close it with the outcome."""
    client = client_for(settings.tracking_uri)
    experiment_id = ensure_experiment(client, experiment, settings.artifact_root)
    flow_run_id = flow_run.get_id()
    run_id = start_or_resume_run(
        client,
        experiment_id,
        flow_run_id,
        run_name=f"{run_name}-{flow_run.get_name() or 'local'}",
        tags={"tailor.flow": run_name},
    )
    try:
        yield client, run_id
    except BaseException:
        finish_run(client, run_id, ok=False)
        raise
    finish_run(client, run_id, ok=True)
