"""Nightly refresh: latest data -> a model version (the champion) -> top-k per user -> publish."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.common import resolve_settings, task_runner_for, tracked_run
from tailor.settings import Settings
from tailor.stages.data import PreparedData
from tailor.stages.refresh import RefreshPlan
from tailor.tracking.registry import resolve_version
from tailor.tracking.runs import client_for
from tasks.data import prepare_data
from tasks.refresh import plan_refresh, publish_recommendations, score_block


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
    t = settings.tracking
    version = resolve_version(
        client_for(settings.tracking_uri), t.model_name, t.champion_alias, model_version
    )
    with tracked_run(settings, t.refresh_experiment, "refresh") as run:
        # Serving uses every event: no items are held out for measurement here.
        prepared = prepare_data(settings, run.out_dir / "data", hold_out_cold=False)
        plan = plan_refresh(prepared, settings, version, run.out_dir / "parts")
        runner = task_runner_for(settings.runner)
        parts = score_blocks.with_options(task_runner=runner)(prepared, settings, plan)
        outcome = publish_recommendations(prepared, settings, plan, parts, run.out_dir / "refresh")
        run.log(outcome)

        s = outcome.summary
        create_markdown_artifact(
            key="refresh-summary",
            markdown=(
                f"# Nightly refresh `{run.run_id}`\n\n"
                f"| model version | users | rows | coverage | tail share |\n"
                f"| --- | --- | --- | --- | --- |\n"
                f"| {version} | {int(s['users'])} | {int(s['rows'])} | {s['coverage']:.3f} "
                f"| {s['tail_share']:.3f} |\n"
            ),
            description="What this refresh published",
        )
        return RefreshResult(
            run_id=run.run_id,
            model_version=version,
            batch_id=outcome.batch.batch_id,
            n_users=outcome.batch.n_users,
            n_rows=outcome.batch.n_rows,
            coverage=s["coverage"],
            tail_share=s["tail_share"],
        )


@flow(name="score-blocks")
def score_blocks(prepared: PreparedData, settings: Settings, plan: RefreshPlan) -> list[Path]:
    """Every block of users scored as its own task, in parallel on the flow's task runner."""
    futures = [score_block.submit(prepared, settings, plan, b) for b in range(plan.n_blocks)]
    return [future.result() for future in futures]


if __name__ == "__main__":
    nightly_refresh()
