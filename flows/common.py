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


def log_baseline_runs(client, parent_run_id: str, evaluation, settings: Settings) -> None:
    """Each baseline as a child run (chosen parameters + metrics), its tuning trials beneath it.

    Child runs share the parent's experiment, so the MLflow UI compares the fine-tuned model
    and every baseline side by side.
    """
    from tailor.tracking import log_metrics, log_params

    parent = client.get_run(parent_run_id)
    experiment_id = parent.info.experiment_id
    existing = {
        r.data.tags.get("tailor.model"): r.info.run_id
        for r in client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
        )
    }
    for name, metrics in evaluation.metrics.items():
        if name == evaluation.primary or name in existing:
            continue  # a retried flow run keeps the child runs it already made
        child = client.create_run(
            experiment_id,
            run_name=name,
            tags={
                "mlflow.parentRunId": parent_run_id,
                "tailor.model": name,
                "tailor.flow": "baseline",
            },
        ).info.run_id
        log_params(
            client, child, {f"{name}.{k}": v for k, v in evaluation.params.get(name, {}).items()}
        )
        log_metrics(client, child, metrics)
        for number, trial in enumerate(t for t in evaluation.trials if t.model == name):
            grandchild = client.create_run(
                experiment_id,
                run_name=f"{name}-trial-{number}",
                tags={"mlflow.parentRunId": child, "tailor.model": name, "tailor.flow": "trial"},
            ).info.run_id
            log_params(client, grandchild, trial.params)
            log_metrics(client, grandchild, {"valid_ndcg_at_10": trial.valid_ndcg_at_10})
            client.set_terminated(grandchild)
        client.set_terminated(child)
