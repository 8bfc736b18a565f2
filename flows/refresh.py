"""Nightly refresh: latest data -> champion model -> top-k per user -> atomic publish."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.common import resolve_settings, tracked_run
from tailor.registry import resolve_version
from tailor.settings import Settings
from tailor.tracking import client_for, log_artifact, log_metrics, log_params
from tasks.data import clean_data
from tasks.refresh import refresh_recommendations


class RefreshResult(BaseModel):
    run_id: str
    model_version: str
    batch_id: str
    n_users: int
    n_rows: int
    coverage: float
    tail_share: float


@flow(name="nightly-refresh", log_prints=True)
def nightly_refresh(
    settings: Settings | None = None,
    preset: str | None = None,
    config: str | None = None,
    model_version: str | None = None,
) -> RefreshResult:
    """Recompute every user's list with a model version (default: the champion, resolved once)."""
    settings = resolve_settings(settings, preset, config)
    version = resolve_version(
        client_for(settings.tracking_uri),
        settings.tracking.model_name,
        settings.tracking.champion_alias,
        model_version,
    )
    with tracked_run(settings, settings.tracking.refresh_experiment, "refresh") as (client, run_id):
        out_dir = settings.runs_dir / run_id
        log_params(client, run_id, {**settings.flat(), "model_version": version})

        # Serving uses every event: no items are held out for measurement here.
        prepared = clean_data(settings, out_dir / "data", hold_out_cold=False)
        outcome = refresh_recommendations(prepared, settings, version, out_dir / "refresh")

        log_metrics(client, run_id, outcome.summary, prefix="published_")
        log_artifact(client, run_id, outcome.out_dir, "refresh")
        client.set_tag(run_id, "model_version", version)
        client.set_tag(run_id, "batch_id", outcome.batch.batch_id)
        s = outcome.summary
        create_markdown_artifact(
            key="refresh-summary",
            markdown=(
                f"# Nightly refresh `{run_id}`\n\n"
                f"| model version | users | rows | coverage | tail share |\n"
                f"| --- | --- | --- | --- | --- |\n"
                f"| {version} | {int(s['users'])} | {int(s['rows'])} | {s['coverage']:.3f} "
                f"| {s['tail_share']:.3f} |\n"
            ),
            description="What this refresh published",
        )
        return RefreshResult(
            run_id=run_id,
            model_version=version,
            batch_id=outcome.batch.batch_id,
            n_users=outcome.batch.n_users,
            n_rows=outcome.batch.n_rows,
            coverage=s["coverage"],
            tail_share=s["tail_share"],
        )


if __name__ == "__main__":
    nightly_refresh()
