"""Hyper-parameter search: every combination of `settings.search` as a child run in MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.common import resolve_settings, tracked_run
from tailor.settings import Settings
from tailor.tracking import log_artifact, log_metrics, log_params
from tasks.data import clean_data
from tasks.embed import embed_item_texts, tune_encoder
from tasks.search import search_trial

OBJECTIVE = "valid_ndcg_at_10"


class TuneResult(BaseModel):
    run_id: str
    best_params: dict[str, float | int]
    best_score: float
    trials: list[dict[str, float | int | str]]  # params, objective, best epoch, child run id
    table: Path


@flow(name="tune", log_prints=True)
def tune(
    settings: Settings | None = None, preset: str | None = None, config: str | None = None
) -> TuneResult:
    """Train one model per grid point on train events and rank them by validation NDCG@10."""
    settings = resolve_settings(settings, preset, config)
    with tracked_run(settings, settings.tracking.experiment, "tune") as (client, run_id):
        out_dir = settings.runs_dir / run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        log_params(client, run_id, settings.flat())
        prepared = clean_data(settings, out_dir / "data")
        embedded = embed_item_texts(prepared.items, tune_encoder(prepared, settings))
        experiment_id = client.get_run(run_id).info.experiment_id

        rows: list[dict[str, float | int | str]] = []
        for number, params in enumerate(settings.search.trials()):
            trial = search_trial(prepared, embedded.vectors, settings, params)
            child = client.create_run(
                experiment_id,
                run_name=f"trial-{number}",
                tags={"mlflow.parentRunId": run_id, "tailor.flow": "search-trial"},
            ).info.run_id
            log_params(client, child, {f"train.{k}": v for k, v in params.items()})
            log_metrics(client, child, {**trial.metrics, "best_epoch": trial.best_epoch})
            client.set_terminated(child, "FINISHED")
            rows.append(
                {
                    **params,
                    OBJECTIVE: trial.metrics[OBJECTIVE],
                    "cold_recall_at_20": trial.metrics.get("cold_recall_at_20", float("nan")),
                    "best_epoch": trial.best_epoch,
                    "run_id": child,
                }
            )
        best = max(rows, key=lambda row: row[OBJECTIVE])
        best_params = {k: best[k] for k in settings.search.trials()[0]}
        log_metrics(client, run_id, {f"best_{OBJECTIVE}": float(best[OBJECTIVE])})
        client.set_tag(run_id, "best_trial", str(best["run_id"]))
        table = out_dir / "search.md"
        table.write_text(_table(rows, best))
        log_artifact(client, run_id, table, "search")
        create_markdown_artifact(
            key="search-summary",
            markdown=f"# Hyper-parameter search `{run_id}`\n\n{table.read_text()}",
            description="Every trial's validation metrics",
        )
        return TuneResult(
            run_id=run_id,
            best_params=best_params,
            best_score=float(best[OBJECTIVE]),
            trials=rows,
            table=table,
        )


def _table(rows: list[dict], best: dict) -> str:
    params = [
        k for k in rows[0] if k not in (OBJECTIVE, "cold_recall_at_20", "best_epoch", "run_id")
    ]
    head = "| " + " | ".join(params) + " | valid NDCG@10 | cold-recall@20 | best epoch | |"
    lines = [head, "|" + " ---: |" * (len(params) + 3) + " --- |"]
    for row in sorted(rows, key=lambda r: -r[OBJECTIVE]):
        cells = [str(row[p]) for p in params]
        mark = "best" if row is best else ""
        lines.append(
            "| " + " | ".join(cells) + f" | {row[OBJECTIVE]:.4f} | {row['cold_recall_at_20']:.4f}"
            f" | {row['best_epoch']} | {mark} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    tune()
