"""One point of the hyper-parameter search: trained on train events, scored on validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailor.evaluation.compare import Exam
from tailor.evaluation.metrics import per_user_metric
from tailor.models.sequential import SeqRecommender
from tailor.ranking.rank import rank_dense
from tailor.settings import Settings, TrainSettings
from tailor.stages.data import PreparedData, load_histories
from tailor.tracking.record import Record

OBJECTIVE = "valid_ndcg_at_10"


@dataclass(frozen=True)
class SearchTrial:
    params: dict[str, Any]  # the train.* values this trial set
    metrics: dict[str, float]  # valid_ndcg_at_10 (the objective), tail and cold recall, ...
    best_epoch: int
    seconds: float

    def record(self) -> Record:
        return Record(
            params={f"train.{k}": v for k, v in self.params.items()},
            metrics={**self.metrics, "best_epoch": self.best_epoch},
        )


def search_trial(
    prepared: PreparedData, vectors_path: Path, settings: Settings, params: dict[str, Any]
) -> SearchTrial:
    """Train with `params` on train events, early-stopped on validation; validation metrics.

    Cold-item recall is measured too (the cold events are outside training either way), so a
    trial that buys accuracy with new-item reach shows it.
    """
    # Validated, so a bad grid value fails with the field's own message.
    train_settings = TrainSettings.model_validate({**settings.train.model_dump(), **params})
    hist = load_histories(prepared)
    exam = Exam(hist, settings.eval)
    model = SeqRecommender(np.load(vectors_path), train_settings, seed=settings.seed)
    # The same early-stopping score as `train_recommender`: a trial is the model it would train.
    report = model.fit(
        hist.train, seed=settings.seed, valid_fn=exam.validation_score, liked=hist.train_liked
    )
    policy = exam.policy(settings.rerank)
    top = rank_dense(model, exam.cases["valid"][0], policy).items
    metrics = {k: v for k, v in exam.measure({"valid": top}).items()}
    if len(hist.cold_targets):
        k = exam.k
        cold = rank_dense(model, exam.cases["cold"][0], policy).items
        metrics[f"cold_recall_at_{k}"] = float(
            per_user_metric(cold, hist.cold_targets, "recall", k).mean()
        )
    return SearchTrial(dict(params), metrics, report.best_epoch, report.seconds)
