"""Training: clean -> embed -> fine-tune -> index -> evaluate -> register (with the gate)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.common import log_baseline_runs, resolve_settings, tracked_run
from tailor.settings import Settings
from tailor.tracking import log_artifact, log_metrics, log_params
from tasks.data import clean_data
from tasks.embed import embed_item_texts, tune_encoder
from tasks.evaluate import evaluate, evaluate_live_cold_start
from tasks.register import bundle_model, register_model, score_current_champion
from tasks.train import build_index, fine_tune_model


class TrainResult(BaseModel):
    run_id: str
    out_dir: Path
    model_version: str
    promoted: bool
    gate_reason: str
    metrics: dict[str, dict[str, float]]
    significance: dict[str, dict[str, float | str]]
    live: dict[str, float]  # cold start through the service path (`tailor.pipeline.ColdStart`)
    n_embedded: int
    n_reused: int


@flow(name="train", log_prints=True)
def train(
    settings: Settings | None = None, preset: str | None = None, config: str | None = None
) -> TrainResult:
    """Train, evaluate against baselines, and register a new model version."""
    settings = resolve_settings(settings, preset, config)
    with tracked_run(settings, settings.tracking.experiment, "train") as (client, run_id):
        out_dir = settings.runs_dir / run_id
        log_params(client, run_id, settings.flat())

        prepared = clean_data(settings, out_dir / "data")
        _log_cleaning(client, run_id, prepared)

        embed_settings = tune_encoder(prepared, settings)
        state = embed_item_texts(prepared.items, embed_settings, return_state=True)
        embedded = state.result()
        # A cache hit means the encoder did not run at all in this flow run.
        cached = state.name == "Cached"
        n_embedded = 0 if cached else embedded.n_embedded
        n_reused = prepared.n_items if cached else embedded.n_reused
        log_metrics(client, run_id, {"items_embedded": n_embedded, "items_reused": n_reused})

        tuned = fine_tune_model(prepared, embedded.vectors, settings, out_dir)
        for epoch, loss in enumerate(tuned.losses, start=1):
            log_metrics(client, run_id, {"train_loss": loss}, step=epoch)
        for epoch, score in enumerate(tuned.valid_scores, start=1):
            log_metrics(client, run_id, {"epoch_valid_ndcg_at_10": score}, step=epoch)
        log_metrics(client, run_id, {"best_epoch": tuned.best_epoch, "fit_seconds": tuned.seconds})

        index_path = build_index(tuned.model_dir, embedded.vectors, settings, out_dir)
        frozen = embedded.vectors
        if embed_settings.embed.model != settings.embed.model:
            # The pre-trained encoder's vectors too, for the text-only baseline.
            frozen = embed_item_texts(prepared.items, settings).vectors
        evaluation = evaluate(prepared, embedded.vectors, tuned, settings, out_dir, frozen)
        primary = evaluation.metrics[evaluation.primary]
        log_metrics(client, run_id, primary)
        for name, values in evaluation.metrics.items():
            if name != evaluation.primary:
                log_metrics(client, run_id, values, prefix=f"{name}.")
        log_baseline_runs(client, run_id, evaluation, settings)
        for claim, sig in evaluation.significance.items():
            log_metrics(
                client,
                run_id,
                {f"{claim}.{key}": sig[key] for key in ("ratio", "gain", "low", "high")},
                prefix="vs_baseline.",
            )
        for step, row in enumerate(evaluation.sweep):
            log_metrics(client, run_id, row, step=step, prefix="rerank_sweep.")
        for path in (evaluation.table, evaluation.plot, evaluation.tradeoff, evaluation.sample):
            log_artifact(client, run_id, path, "evaluation")

        # Bundled with the settings that name the encoder actually used (a tuned one, if any),
        # so the service embeds queries and new items into the same space.
        bundle = bundle_model(
            prepared, embedded.vectors, tuned.model_dir, index_path, embed_settings, out_dir
        )
        cold_start = evaluate_live_cold_start(prepared, bundle, settings, out_dir / "cold_start")
        log_metrics(client, run_id, cold_start.metrics, prefix="live.")
        log_artifact(client, run_id, cold_start.table, "evaluation")

        gate_value = primary.get(settings.eval.gate_metric, float("nan"))
        current = score_current_champion(prepared, settings)
        champion_score = None
        if current is not None:
            log_metrics(client, run_id, current.metrics, prefix="champion.")
            champion_score = (
                current.version,
                current.metrics.get(settings.eval.gate_metric, float("nan")),
            )
        decision = register_model(bundle, settings, run_id, gate_value, champion_score)
        client.set_tag(run_id, "model_version", decision.version)
        client.set_tag(run_id, "promoted", str(decision.promoted))
        client.set_tag(run_id, "gate", decision.reason)

        create_markdown_artifact(
            key="train-summary",
            markdown=_summary_markdown(
                settings,
                run_id,
                decision,
                evaluation.table.read_text() + "\n" + cold_start.table.read_text(),
            ),
            description="Metrics of this training run against the baselines",
        )
        return TrainResult(
            run_id=run_id,
            out_dir=out_dir,
            model_version=decision.version,
            promoted=decision.promoted,
            gate_reason=decision.reason,
            metrics=evaluation.metrics,
            significance=evaluation.significance,
            live=cold_start.metrics,
            n_embedded=n_embedded,
            n_reused=n_reused,
        )


def _log_cleaning(client, run_id: str, prepared) -> None:
    metrics = {
        "n_users": prepared.n_users,
        "n_items": prepared.n_items,
        "n_interactions": prepared.n_interactions,
    }
    for source, report in prepared.report.items():
        for reason, count in (report.get("rejected") or {}).items():
            metrics[f"quarantined.{source}.{reason.replace(' ', '_')}"] = count
    log_metrics(client, run_id, metrics)
    folder = Path(prepared.quarantine).parent
    log_artifact(client, run_id, folder / "cleaning_report.json", "cleaning")
    log_artifact(client, run_id, prepared.quarantine, "cleaning")


def _summary_markdown(settings: Settings, run_id: str, decision, table: str) -> str:
    verdict = "promoted to `champion`" if decision.promoted else "not promoted"
    return (
        f"# tailor training run `{run_id}`\n\n"
        f"Model `{settings.tracking.model_name}` version **{decision.version}**: {verdict} "
        f"({decision.reason}).\n\n{table}\n"
    )


if __name__ == "__main__":
    train()
