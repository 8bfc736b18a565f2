"""Hyper-parameter search: every combination of `settings.search` as a child run in MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.common import embedding_of, resolve_settings, tracked_run
from tailor.settings import Settings
from tailor.stages.search import OBJECTIVE
from tailor.tracking.record import Child, Record
from tasks.data import prepare_data
from tasks.embed import embed_items, tune_encoder
from tasks.search import search_trial


class SearchResult(BaseModel):
    run_id: str
    best_params: dict[str, float | int]
    best_score: float
    trials: list[dict[str, float | int | str]]  # params, objective, best epoch, child run id
    table: Path


@flow(name="search", log_prints=True)
def search(
    settings: Settings | None = None, preset: str | None = None, config: str | None = None
) -> SearchResult:
    """Train one model per grid point on train events and rank them by validation NDCG@10."""
    settings = resolve_settings(settings, preset, config)
    with tracked_run(settings, settings.tracking.experiment, "search") as run:
        prepared = prepare_data(settings, run.out_dir / "data")
        encoded = tune_encoder(prepared, settings)
        embedded = embedding_of(embed_items(prepared.items, encoded, return_state=True))

        rows: list[dict[str, float | int | str]] = []
        for number, params in enumerate(settings.search.trials()):
            trial = search_trial(prepared, embedded.vectors, settings, params)
            name = f"trial-{number}"
            child = run.log(
                Record(children=[Child(name, trial.record(), {"tailor.flow": "search-trial"})])
            )
            rows.append(
                {
                    **params,
                    OBJECTIVE: trial.metrics[OBJECTIVE],
                    "cold_recall_at_20": trial.metrics.get("cold_recall_at_20", float("nan")),
                    "best_epoch": trial.best_epoch,
                    "run_id": child[name],
                }
            )
        best = max(rows, key=lambda row: row[OBJECTIVE])
        table = run.out_dir / "search.md"
        table.write_text(_table(rows, best))
        run.log(
            Record(
                metrics={f"best_{OBJECTIVE}": float(best[OBJECTIVE])},
                tags={"best_trial": str(best["run_id"])},
                artifacts=[(table, "search")],
            )
        )
        create_markdown_artifact(
            key="search-summary",
            markdown=f"# Hyper-parameter search `{run.run_id}`\n\n{table.read_text()}",
            description="Every trial's validation metrics",
        )
        return SearchResult(
            run_id=run.run_id,
            best_params={k: best[k] for k in settings.search.trials()[0]},
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
    search()
