"""Training: clean -> embed -> evaluation fit (baselines beside it) -> evaluate (production fit
beside it) -> register (gate)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.common import embed_in_shards, embedding_of, resolve_settings, tracked_run
from tailor.settings import Settings
from tailor.stages.child import side_by_side
from tailor.stages.register import lineage_of
from tailor.stages.train import PRODUCTION_RUN
from tasks.data import prepare_data
from tasks.embed import embed_items, tune_encoder
from tasks.evaluate import evaluate_cold_start, evaluate_draws, evaluate_models, fit_baselines
from tasks.index import build_index
from tasks.register import bundle_model, register_model, score_champion
from tasks.train import train_production, train_production_beside, train_recommender


class TrainResult(BaseModel):
    run_id: str  # the training run (the evaluation fit's metrics)
    production_run_id: str  # its child run: the production fit, source of the version
    production_seconds: float  # training time of the production fit
    ablation_seconds: float  # training and scoring of the ablation rows (eval.ablation)
    draws_seconds: float  # the cold-item and new-user draws (eval.draws)
    draws: list[dict[str, float | int | str]]  # cold-item recall per draw, then pooled
    out_dir: Path
    model_version: str
    promoted: bool
    gate_reason: str
    metrics: dict[str, dict[str, float]]
    significance: dict[str, dict[str, float | str]]
    live: dict[str, float]  # cold start through the service path
    n_embedded: int
    n_reused: int


@flow(name="train", log_prints=True)
def train(
    settings: Settings | None = None, preset: str | None = None, config: str | None = None
) -> TrainResult:
    """Evaluate against baselines (the evaluation fit), then register the production fit."""
    settings = resolve_settings(settings, preset, config)
    with tracked_run(settings, settings.tracking.experiment, "train") as run:
        out = run.out_dir
        prepared = prepare_data(settings, out / "data")
        run.log(prepared)

        # The bundle's settings name the encoder actually used (a tuned one, if any), so the
        # service embeds queries and new items into the same space.
        encoded = tune_encoder(prepared, settings)
        sharded = embed_in_shards(prepared.items, encoded, out / "embedding")
        embedded = embedding_of(embed_items(prepared.items, encoded, return_state=True), sharded)
        run.log(embedded)
        vectors = embedded.vectors

        frozen = vectors
        if encoded.embed.model != settings.embed.model:
            frozen = embed_items(prepared.items, settings).vectors  # for text-cosine
        # The baselines' fits need nothing of the model: they run beside its fit.
        lane, baselines = settings, None
        if settings.eval.baselines_beside:
            lane = side_by_side(settings)
            baselines = fit_baselines.submit(prepared, vectors, lane, out / "baselines", frozen)

        # The evaluation fit: hold-outs as the protocol needs; every metric comes from it.
        trained = train_recommender(prepared, vectors, lane, out / "evaluation_fit")
        run.log(trained)
        # The production fit (the same recipe on every event, what gets registered) needs
        # nothing but the evaluation fit either: it runs beside the stages that measure it.
        production = None
        if settings.train.production_beside:
            production = train_production_beside.submit(
                prepared, vectors, trained, side_by_side(settings), out / "production"
            )
        fitted = baselines.result() if baselines is not None else None
        evaluation = evaluate_models(
            prepared, vectors, trained, settings, out / "evaluation", frozen, fitted
        )
        run.log(evaluation)
        index = build_index(
            trained.model_dir, vectors, settings.index, settings.seed, out, prepared
        )
        candidate = bundle_model(prepared, vectors, trained.model_dir, index.path, encoded, out)
        cold_start = evaluate_cold_start(prepared, candidate, settings, out / "cold_start")
        run.log(cold_start)
        draws = None
        if settings.eval.draws:
            # Several held-out item and user sets, one production-recipe fit each.
            draws = evaluate_draws(prepared, vectors, evaluation, trained, encoded, out / "draws")
            run.log(draws)

        if production is None:
            production = train_production(prepared, vectors, trained, settings, out / "production")
        else:
            production = production.result()
        production_run = run.log(production)[PRODUCTION_RUN]
        index = build_index(
            production.model_dir,
            vectors,
            settings.index,
            settings.seed,
            out / "production",
            prepared,
        )
        run.log(index)  # the served index: its kind, tuned depth and recall against exact
        lineage = lineage_of(prepared, evaluation, run.run_id, production_run)
        bundle = bundle_model(
            prepared,
            vectors,
            production.model_dir,
            index.path,
            encoded,
            out / "production",
            lineage,
        )

        comparison = score_champion(prepared, candidate, evaluation, settings)
        run.log(comparison)
        gate_value = evaluation.metrics[evaluation.primary].get(settings.eval.gate_metric)
        decision = register_model(bundle, comparison, gate_value, settings, production_run)
        run.log(decision)

        summary = evaluation.table.read_text() + "\n" + cold_start.table.read_text()
        create_markdown_artifact(
            key="train-summary",
            markdown=_summary_markdown(settings, run.run_id, decision, summary),
            description="Metrics of this training run against the baselines",
        )
        return TrainResult(
            run_id=run.run_id,
            production_run_id=production_run,
            production_seconds=production.seconds,
            ablation_seconds=evaluation.ablation_seconds,
            draws_seconds=draws.seconds if draws else 0.0,
            draws=draws.cold if draws else [],
            out_dir=out,
            model_version=decision.version,
            promoted=decision.promoted,
            gate_reason=decision.reason,
            metrics=evaluation.metrics,
            significance=evaluation.significance,
            live=cold_start.metrics,
            n_embedded=embedded.n_embedded,
            n_reused=embedded.n_reused,
        )


def _summary_markdown(settings: Settings, run_id: str, decision, table: str) -> str:
    verdict = "promoted to `champion`" if decision.promoted else "not promoted"
    return (
        f"# tailor training run `{run_id}`\n\n"
        f"Model `{settings.tracking.model_name}` version **{decision.version}**: {verdict} "
        f"({decision.reason}).\n\n{table}\n"
    )


if __name__ == "__main__":
    train()
