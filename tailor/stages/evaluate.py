"""Evaluation of a run: every model on the protocol's cases, and cold start through serving."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.evaluation.ablation import ablate, ablation_markdown
from tailor.evaluation.cold_start import evaluate_cold_start as measure_cold_start
from tailor.evaluation.compare import SEQUENTIAL, Exam, Trial
from tailor.evaluation.compare import evaluate_models as compare_models
from tailor.evaluation.draws import Draw, cold_summary, draws_markdown, new_user_summary, run_draw
from tailor.evaluation.metrics import exposure
from tailor.evaluation.plots import plot_long_tail, plot_tradeoff
from tailor.evaluation.report import evaluation_markdown, write_sample
from tailor.evaluation.significance import bootstrap_claims
from tailor.models.sequential import load_recommender
from tailor.settings import Settings
from tailor.stages.baselines import FittedBaselines, load_baseline_fits
from tailor.stages.data import PreparedData, all_interactions, load_histories, pseudonyms_for
from tailor.stages.embed import load_text_vectors
from tailor.stages.train import Trained
from tailor.tracking.record import Child, Record


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, dict[str, float]]  # model -> {"valid_ndcg_at_10": ..., "test_...": ...}
    params: dict[str, dict[str, Any]]  # model -> chosen hyper-parameters
    trials: list[Trial]  # every baseline search trial, for child runs
    significance: dict[str, dict[str, Any]]  # claim -> vs, ratio, gain, low, high
    sweep: list[dict[str, float]]  # re-ranking strength -> test metrics
    table: Path  # markdown comparison table
    plot: Path  # long-tail curve with exposure overlaid
    tradeoff: Path  # accuracy against tail share as the re-ranking strength moves
    sample: Path  # a sample of test-time recommendations, with labels
    primary: str = SEQUENTIAL  # the sequential model's name in `metrics`
    extra_artifacts: list[Path] = field(default_factory=list)
    ablation: dict[str, dict[str, float]] = field(default_factory=dict)  # row -> test metrics
    ablation_seconds: float = 0.0

    def record(self) -> Record:
        metrics = dict(self.metrics[self.primary])
        for name, values in self.metrics.items():
            if name != self.primary:
                metrics.update({f"{name}.{k}": v for k, v in values.items()})
        for claim, sig in self.significance.items():
            for key in ("ratio", "gain", "low", "high"):
                metrics[f"vs_baseline.{claim}.{key}"] = sig[key]
        if self.ablation:
            metrics["ablation_seconds"] = self.ablation_seconds
        for row, values in self.ablation.items():
            slug = "".join(c if c.isalnum() else "_" for c in row).strip("_")
            metrics.update({f"ablation.{slug}.{k}": v for k, v in values.items()})
        series: dict[str, dict[int, float]] = {}
        for step, row in enumerate(self.sweep):
            for key, value in row.items():
                series.setdefault(f"rerank_sweep.{key}", {})[step] = value
        artifacts = [(p, "evaluation") for p in (self.table, self.plot, self.tradeoff, self.sample)]
        return Record(
            metrics=metrics,
            series=series,
            artifacts=artifacts + [(p, "evaluation") for p in self.extra_artifacts],
            children=[self._baseline_run(name) for name in self.metrics if name != self.primary],
        )

    def _baseline_run(self, name: str) -> Child:
        """A baseline as a child run (chosen parameters + metrics), its trials beneath it."""
        trials = [t for t in self.trials if t.model == name]
        return Child(
            name,
            Record(
                params={f"{name}.{k}": v for k, v in self.params.get(name, {}).items()},
                metrics=self.metrics[name],
                children=[
                    Child(
                        f"{name}-trial-{number}",
                        Record(params=t.params, metrics={"valid_ndcg_at_10": t.valid_ndcg_at_10}),
                        tags={"tailor.model": name, "tailor.flow": "trial"},
                    )
                    for number, t in enumerate(trials)
                ],
            ),
            tags={"tailor.model": name, "tailor.flow": "baseline"},
        )


def evaluate_models(
    prepared: PreparedData,
    vectors_path: Path,
    trained: Trained,
    settings: Settings,
    out_dir: Path,
    frozen_vectors_path: Path | None = None,
    fitted: FittedBaselines | None = None,
) -> Evaluation:
    """The evaluation fit and every baseline under the default protocol, with its reports.

    `vectors_path` holds the text vectors the model was trained on; when those came from a
    tuned encoder, `frozen_vectors_path` holds the pre-trained encoder's (for `text-cosine`).
    `fitted`: the baselines' fits made beside the evaluation fit (else they are made here).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hist = load_histories(prepared)
    exam = Exam(hist, settings.eval)
    text_vectors, frozen = load_text_vectors(vectors_path, frozen_vectors_path)
    device = settings.train.device
    fits = None if fitted is None else load_baseline_fits(fitted, text_vectors, device)
    comparison = compare_models(
        exam,
        text_vectors,
        load_recommender(trained.valid_model_dir, text_vectors, device),
        load_recommender(trained.model_dir, text_vectors, device),
        {"epochs": trained.best_epoch},
        settings.rerank,
        settings.index,
        settings.seed,
        frozen_vectors=frozen,
        train=settings.train,
        fitted=fits,
    )
    significance = bootstrap_claims(comparison, exam, settings.seed)
    rows, started = [], time.perf_counter()
    if settings.eval.ablation:
        rows = ablate(
            exam,
            comparison,
            text_vectors,
            settings.train,
            settings.rerank,
            settings.index,
            settings.seed,
            tuned_vectors=None if frozen is not None else tuned_item_vectors(prepared, settings),
        )
    ablation_seconds = time.perf_counter() - started if rows else 0.0
    table = out_dir / "evaluation.md"
    report = evaluation_markdown(comparison, significance, exam, prepared.n_cold_items)
    table.write_text(report + ("\n" + ablation_markdown(rows) if rows else ""))
    k = exam.k
    plot = plot_long_tail(
        exam.popularity,
        {name: exposure(top[:, :k], hist.n_items) for name, top in comparison.test_tops.items()},
        out_dir / "long_tail.png",
        head_share=settings.eval.head_share,
        title=f"Train popularity and exposure in test-time top-{k} lists",
    )
    sweep = comparison.sweep
    tradeoff = plot_tradeoff(
        [row["strength"] for row in sweep],
        [row["ndcg_at_10"] for row in sweep],
        [row[f"aplt_at_{k}"] for row in sweep],
        out_dir / "rerank_tradeoff.png",
        tail_name=f"APLT@{k}",
        chosen=settings.rerank.strength,
        baseline_points={
            name: (m.get(f"test_aplt_at_{k}", 0.0), m.get("test_ndcg_at_10", 0.0))
            for name, m in comparison.metrics.items()
            if name != SEQUENTIAL
        },
    )
    labels = pl.read_parquet(prepared.items, columns=[C.LABEL])[C.LABEL].to_list()
    sample = write_sample(
        labels,
        exam,
        comparison.test_tops[SEQUENTIAL],
        out_dir / "sample_recommendations.csv",
        show_ids=pseudonyms_for(settings),
    )
    return Evaluation(
        metrics=comparison.metrics,
        params=comparison.params,
        trials=comparison.trials,
        significance=significance,
        sweep=sweep,
        table=table,
        plot=plot,
        tradeoff=tradeoff,
        sample=sample,
        ablation={row.name: row.metrics for row in rows},
        ablation_seconds=ablation_seconds,
    )


def tuned_item_vectors(prepared: PreparedData, settings: Settings) -> np.ndarray:
    """Item vectors from the encoder tuned on this run's training positives (the ablation's
    encoder-tuning row), whatever `embed.tuning.enabled` says."""
    from tailor.stages.embed import embed_items, tune_encoder

    tuning = settings.embed.tuning.model_copy(update={"enabled": True})
    wanted = settings.model_copy(
        update={"embed": settings.embed.model_copy(update={"tuning": tuning})}
    )
    tuned = tune_encoder(prepared, wanted, progress=False)
    return np.load(embed_items(prepared.items, tuned, progress=False).vectors)


@dataclass(frozen=True)
class ColdStart:
    metrics: dict[str, float]
    table: Path  # markdown summary

    def record(self) -> Record:
        return Record(
            metrics={f"live.{k}": v for k, v in self.metrics.items()},
            artifacts=[(self.table, "evaluation")],
        )


def evaluate_cold_start(
    prepared: PreparedData, bundle_dir: Path, settings: Settings, out_dir: Path
) -> ColdStart:
    """New users (profile only) and new items (inserted like the service does), measured
    through the live service's code on this run's test cases (`tailor.evaluation.cold_start`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    users = pl.read_parquet(prepared.users) if prepared.users is not None else None
    metrics, text = measure_cold_start(load_histories(prepared), users, bundle_dir, settings)
    table = out_dir / "cold_start.md"
    table.write_text(text)
    return ColdStart(metrics=metrics, table=table)


@dataclass(frozen=True)
class Draws:
    """Cold items and new users over several draws (`tailor.evaluation.draws`)."""

    cold: list[dict[str, Any]]  # per draw, then pooled
    new_users: list[dict[str, Any]]  # (events, ranking) rows, pooled
    table: Path
    seconds: float

    def record(self) -> Record:
        metrics: dict[str, float] = {"draws.seconds": self.seconds}
        for i, row in enumerate(self.cold):
            name = "pooled" if row["draw"].startswith("pooled") else f"draw_{i}"
            for key in ("tailor-seq", "low", "high", "text-cosine", "gain_low", "top_two_share"):
                if key in row:
                    slug = key.replace("-", "_")
                    metrics[f"draws.cold.{name}.{slug}"] = float(row[key])
        for row in self.new_users:
            if "gain" not in row:
                continue
            slug = row["ranking"].replace(" + ", "_and_").replace(" ", "_")
            for key in ("recall", "gain", "low", "high"):
                metrics[f"draws.new_user.{row['events']}_events.{slug}.{key}"] = row[key]
        return Record(metrics=metrics, artifacts=[(self.table, "evaluation")])


def evaluate_draws(
    prepared: PreparedData,
    vectors_path: Path,
    evaluation: Evaluation,
    trained: Trained,
    settings: Settings,
    out_dir: Path,
    progress: bool = True,
) -> Draws:
    """`eval.draws` draws of held-out items and users, each trained by the production recipe
    for the epochs the evaluation fit chose; text-cosine keeps the parameters it was chosen
    with on validation. `settings.embed` must name the encoder the vectors came from."""
    from tqdm.auto import tqdm

    from tailor.serving.encoder import TextVectors

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    events = all_interactions(prepared)
    items = pl.read_parquet(prepared.items)
    users = pl.read_parquet(prepared.users) if prepared.users is not None else None
    text_vectors = np.load(vectors_path)
    texts = TextVectors(settings.embed, cache_size=0, cache_dir=settings.cache_dir)
    started = time.perf_counter()
    draws: list[Draw] = []
    seeds = [settings.seed + d for d in range(settings.eval.draws)]
    for seed in tqdm(seeds, desc="draws", unit="draw", disable=not progress):
        draws.append(
            run_draw(
                events,
                items,
                users,
                text_vectors,
                settings,
                seed,
                trained.best_epoch,
                texts.encode,
                evaluation.params,
            )
        )
    s = settings.eval
    n, seed = s.bootstrap_resamples, settings.seed
    table = out_dir / "draws.md"
    table.write_text(draws_markdown(draws, max(s.ks), n, seed))
    return Draws(
        cold=cold_summary(draws, n, seed),
        new_users=new_user_summary(draws, n, seed),
        table=table,
        seconds=time.perf_counter() - started,
    )
