"""Glue every flow shares: resolving settings and one MLflow run per Prefect flow run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from tailor.settings import RunnerSettings, Settings, load_settings
from tailor.tracking.record import Record, log_record
from tailor.tracking.runs import client_for, ensure_experiment, finish_run, start_or_resume_run


def resolve_settings(settings: Settings | None, preset: str | None, config: str | None) -> Settings:
    if settings is not None:
        return settings
    return load_settings(Path(config) if config else None, preset=preset)


def task_runner_for(runner: RunnerSettings):
    """The Prefect task runner `runner` names: threads here, or a Dask cluster (a local one
    of `workers` single-threaded processes, or the existing one at `dask_address`)."""
    if runner.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=runner.workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as e:
        raise RuntimeError(
            "runner.kind = 'dask' needs prefect-dask: pip install 'tailor[scale]'"
        ) from e
    if runner.dask_address:
        return DaskTaskRunner(address=runner.dask_address)
    # One thread per worker: torch and faiss already use the cores a block is given.
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": runner.workers, "threads_per_worker": 1, "processes": True}
    )


@dataclass
class TrackedRun:
    """The MLflow run of one flow run; `log` writes what one step records."""

    client: object
    run_id: str
    out_dir: Path

    def log(self, result) -> dict[str, str]:
        """`result.record()` (or a `Record`) into this run; returns child run ids by name.
        None (a step with nothing to say, such as no champion to compare with) logs nothing."""
        if result is None:
            return {}
        record = result if isinstance(result, Record) else result.record()
        return log_record(self.client, self.run_id, record)


@contextmanager
def tracked_run(settings: Settings, experiment: str, flow: str) -> Iterator[TrackedRun]:
    """Create (or, for a retried flow run, reuse) the MLflow run, log the settings as params,
    and close it with the outcome. Outputs go to `settings.runs_dir / <run id>`."""
    client = client_for(settings.tracking_uri)
    experiment_id = ensure_experiment(client, experiment, settings.artifact_root)
    run_id = start_or_resume_run(
        client,
        experiment_id,
        flow_run.get_id(),
        run_name=f"{flow}-{flow_run.get_name() or 'local'}",
        tags={"tailor.flow": flow},
    )
    run = TrackedRun(client, run_id, settings.runs_dir / run_id)
    try:
        run.log(Record(params=settings.flat()))
        yield run
    except BaseException:
        finish_run(client, run_id, ok=False)
        raise
    finish_run(client, run_id, ok=True)


def runs_in_parallel(runner: RunnerSettings) -> bool:
    return runner.kind == "dask" or runner.workers > 1


@flow(name="embed-shards")
def embed_shards(plan, settings: Settings) -> int:
    """Every shard of new texts as its own task, in parallel on the flow's task runner."""
    from tasks.embed import embed_shard

    futures = [embed_shard.submit(plan, i, settings) for i in range(plan.n_shards)]
    return sum(future.result() for future in futures)


def embed_in_shards(items_path: Path, settings: Settings, work_dir: Path) -> int:
    """With a parallel runner and more new texts than `embed.shard_texts`, encode them in shards
    across the runner's workers first (into the embedding cache); how many were encoded.
    Otherwise nothing: the embed task encodes them in one pass, as on a laptop."""
    from tasks.embed import plan_embedding

    if not runs_in_parallel(settings.runner):
        return 0
    plan = plan_embedding(items_path, settings, work_dir)
    if plan.n_shards <= 1:
        return 0
    runner = task_runner_for(settings.runner)
    return embed_shards.with_options(task_runner=runner)(plan, settings)


def embedding_of(state, sharded: int = 0):
    """The embed task's result; a cache hit means the encoder did not run in this flow run."""
    embedded = state.result()
    if state.name == "Cached":
        return replace(embedded, n_embedded=0, n_reused=embedded.n_embedded + embedded.n_reused)
    if sharded:  # encoded by the shards just before, found in the cache by the task
        return replace(embedded, n_embedded=sharded, n_reused=embedded.n_reused - sharded)
    return embedded
