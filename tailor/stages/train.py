"""Training the sequential recommender: the evaluation fit, early-stopped on validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tailor.evaluation.compare import Exam
from tailor.models.sequential import EnsembleRecommender, SeqRecommender
from tailor.ranking.rank import rank_dense
from tailor.settings import Settings
from tailor.stages.data import PreparedData, load_histories
from tailor.tracking.record import Record


@dataclass(frozen=True)
class Trained:
    """The evaluation fit: what every reported metric comes from."""

    model_dir: Path  # the model evaluated on test (the refit, or the mean of both)
    valid_model_dir: Path  # the model trained on train only, early-stopped on validation
    losses: list[float]
    valid_scores: list[float]
    best_epoch: int
    seconds: float

    def record(self) -> Record:
        return Record(
            metrics={"best_epoch": self.best_epoch, "fit_seconds": self.seconds},
            series={
                "train_loss": dict(enumerate(self.losses, start=1)),
                "epoch_valid_ndcg_at_10": dict(enumerate(self.valid_scores, start=1)),
            },
        )


def early_stopping_score(exam: Exam):
    """Validation NDCG@10 of the model's own order: what training keeps the best epoch by."""
    histories = exam.cases["valid"][0]

    def score(model: SeqRecommender) -> float:
        return exam.ndcg_at_10(rank_dense(model, histories, exam.policy(None)).items)

    return score


def train_recommender(
    prepared: PreparedData,
    vectors_path: Path,
    settings: Settings,
    out_dir: Path,
    progress: bool = True,
) -> Trained:
    """Train on train events, early-stop on validation; then refit on train + validation.

    With `train.ensemble` the evaluated model is the mean of the two (the early-stopped one
    and its refit): two models that saw different data disagree where either is unsure, and
    their mean is steadier from run to run than either alone.
    """
    hist = load_histories(prepared)
    exam = Exam(hist, settings.eval)
    text_vectors = np.load(vectors_path)
    s = settings.train
    model = SeqRecommender(text_vectors, s, seed=settings.seed)
    report = model.fit(
        hist.train,
        seed=settings.seed,
        valid_fn=early_stopping_score(exam) if len(hist.valid_users) else None,
        progress=progress,
    )
    valid_dir = Path(out_dir) / "model_valid"
    model.save(valid_dir)
    seconds = report.seconds
    serve_dir = valid_dir
    if s.refit and len(hist.valid_users):
        refit = SeqRecommender(
            text_vectors, s.model_copy(update={"epochs": report.best_epoch}), seed=settings.seed
        )
        seconds += refit.fit(hist.train_and_valid(), seed=settings.seed, progress=progress).seconds
        serve_dir = Path(out_dir) / "model"
        evaluated = EnsembleRecommender([model, refit]) if s.ensemble else refit
        evaluated.save(serve_dir)
    return Trained(
        model_dir=serve_dir,
        valid_model_dir=valid_dir,
        losses=report.losses,
        valid_scores=report.valid_scores,
        best_epoch=report.best_epoch,
        seconds=seconds,
    )
