"""Training the sequential recommender: the evaluation fit (early-stopped on validation, every
reported metric) and the production fit (the same recipe on every event, registered)."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.evaluation.compare import Exam
from tailor.models.sequential import fit_members, load_recommender, refit_settings
from tailor.models.windows import write_windows
from tailor.settings import Settings
from tailor.stages.child import (
    from_json,
    read_request,
    run_in_child,
    settings_for_child,
    to_json,
    write_answer,
)
from tailor.stages.data import PreparedData, all_histories, load_histories
from tailor.tracking.record import Child, Record


@dataclass(frozen=True)
class Trained:
    """The evaluation fit: what every reported metric comes from."""

    model_dir: Path  # the model evaluated on test (the refit, or the mean of both)
    valid_model_dir: Path  # the model trained on train only, early-stopped on validation
    losses: list[float]
    valid_scores: list[float]
    valid_epochs: list[int]  # the epochs of `valid_scores` (every `train.valid_every`)
    threads: int  # torch threads the fit ran on (`train.threads = auto`: the idle cores)
    best_epoch: int
    seconds: float
    windows: int = 0  # windows both fits trained on, summed over epochs

    def record(self) -> Record:
        return Record(
            metrics={
                "best_epoch": self.best_epoch,
                "fit_seconds": self.seconds,
                "fit_windows": self.windows,
                "train_threads": self.threads,
            },
            series={
                "train_loss": dict(enumerate(self.losses, start=1)),
                "epoch_valid_ndcg_at_10": dict(
                    zip(self.valid_epochs, self.valid_scores, strict=True)
                ),
            },
        )


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
    exam = Exam(load_histories(prepared), settings.eval)
    fitted = exam.fit(np.load(vectors_path), settings.train, settings.seed, progress=progress)
    valid_dir = Path(out_dir) / "model_valid"
    fitted.valid_model.save(valid_dir)
    serve_dir = valid_dir
    if fitted.evaluated is not fitted.valid_model:
        serve_dir = Path(out_dir) / "model"
        fitted.evaluated.save(serve_dir)
    return Trained(
        model_dir=serve_dir,
        valid_model_dir=valid_dir,
        losses=fitted.report.losses,
        valid_scores=fitted.report.valid_scores,
        valid_epochs=fitted.report.valid_epochs,
        threads=fitted.report.threads,
        best_epoch=fitted.report.best_epoch,
        seconds=fitted.seconds,
        windows=fitted.windows,
    )


@dataclass(frozen=True)
class ProductionFit:
    """The production fit: the evaluation fit's recipe on every event. Registered and served."""

    model_dir: Path
    epochs: int  # what early stopping chose in the evaluation fit, or the warm refit's
    seeds: list[int]  # one per member
    losses: list[list[float]]  # per member, per epoch
    seconds: float
    n_users: int
    n_events: int
    n_positives: int
    n_items_trained: int  # items that were a training target: they have learned id embeddings
    data_fingerprint: str
    data_start: str
    data_end: str
    windows: int = 0  # windows the members trained on, summed over epochs

    def record(self) -> Record:
        """A child run `production-fit` of the training run."""
        summary = Record(
            params={
                "epochs": self.epochs,
                "members": len(self.seeds),
                "seeds": ",".join(map(str, self.seeds)),
                "data_fingerprint": self.data_fingerprint,
                "data_start": self.data_start,
                "data_end": self.data_end,
            },
            metrics={
                "fit_seconds": self.seconds,
                "fit_windows": self.windows,
                "n_users": self.n_users,
                "n_events": self.n_events,
                "n_positives": self.n_positives,
                "n_items_trained": self.n_items_trained,
            },
            series={
                f"train_loss_member_{i}": dict(enumerate(losses, start=1))
                for i, losses in enumerate(self.losses)
            },
        )
        return Record(
            metrics={"production.fit_seconds": self.seconds},
            children=[Child(PRODUCTION_RUN, summary, {"tailor.flow": PRODUCTION_RUN})],
        )


PRODUCTION_RUN = "production-fit"
PRODUCTION_FILE = "production.json"  # a child process's answer (`train_production_in_child`)


def train_production(
    prepared: PreparedData,
    vectors_path: Path,
    trained: Trained,
    settings: Settings,
    out_dir: Path,
    progress: bool = True,
) -> ProductionFit:
    """The evaluation fit's recipe on every event: each user's latest events and the items
    held out for the cold-item measurement included, for the epochs early stopping chose;
    with warm refits (`train.refit_epochs`), the evaluated members continue for that many,
    on each user's newest window (`train.refit_windows = "newest"`: it holds what they have
    not seen) or on every window.

    With `train.ensemble` (and a refit) the evaluated model was the mean of two members, so
    the production model is too; with no validation split left, the members differ by seed.
    """
    text_vectors = np.load(vectors_path)
    warm = bool(settings.train.refit_epochs and settings.train.refit)
    # A warm continuation learns what was added: each user's newest window holds it.
    newest = warm and settings.train.refit_windows == "newest"
    if prepared.all_events is not None:
        # Prepared in user partitions: the windows stream from disk, never all in memory.
        item_ids = pl.read_parquet(prepared.items, columns=[C.ITEM_ID])[C.ITEM_ID].to_list()
        scratch = Path(out_dir) / "windows"  # training input only: removed after the fit
        data = write_windows(
            prepared.all_events, item_ids, settings.train.max_len, scratch, newest_only=newest
        )
        liked = None
        # write_windows counted as it streamed: every event, user and liked event per item.
        trained_on = data.counts[data.counts > 0]
        counted = (data.users, data.events, int(trained_on.sum()), len(trained_on))
    else:
        users, histories, liked = all_histories(prepared)
        data = histories
        positives = np.concatenate([h[m] for h, m in zip(histories, liked, strict=True)])
        counted = (len(users), sum(len(h) for h in histories), len(positives))
        counted += (len(np.unique(positives)),)
    evaluated_two = settings.train.refit and settings.train.ensemble
    ensemble = evaluated_two and trained.model_dir != trained.valid_model_dir
    seeds = [settings.seed, settings.seed + 1] if ensemble else [settings.seed]
    starts = None
    if warm:
        # Warm refits: the evaluated model's members continue on the data with every event,
        # as the evaluation refit continued the early-stopped model on train + validation.
        evaluated = load_recommender(trained.model_dir, text_vectors, settings.train.device)
        starts = getattr(evaluated, "members", [evaluated])
    cold = settings.train.model_copy(update={"refit_epochs": None})
    s = refit_settings(settings.train if warm else cold, trained.best_epoch)
    try:
        model, losses, seconds, windows = fit_members(
            text_vectors, s, seeds, data, liked, progress, starts, newest
        )
    finally:
        if prepared.all_events is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    model_dir = Path(out_dir) / "model"
    model.save(model_dir)
    n_users, n_events, n_positives, n_items_trained = counted
    return ProductionFit(
        model_dir=model_dir,
        epochs=s.epochs,
        seeds=seeds,
        losses=losses,
        seconds=seconds,
        n_users=n_users,
        n_events=n_events,
        n_positives=n_positives,
        n_items_trained=n_items_trained,
        data_fingerprint=prepared.fingerprint,
        data_start=prepared.data_start,
        data_end=prepared.data_end,
        windows=windows,
    )


def train_production_in_child(
    prepared: PreparedData,
    vectors_path: Path,
    trained: Trained,
    settings: Settings,
    out_dir: Path,
) -> tuple[ProductionFit, float]:
    """`train_production` in a new Python process (`tailor.stages.child`), so that it can run
    beside the evaluation and cold-start stages, which need only the evaluation fit too.
    Returns the fit and the child's wall seconds (start-up included). Its log goes to
    `out_dir/production.log`; a failure raises with the log's end.
    """
    out_dir = Path(out_dir)
    request = {
        "prepared": to_json(prepared),
        "vectors_path": str(vectors_path),
        "trained": to_json(trained),
        "settings": settings_for_child(settings),
        "out_dir": str(out_dir),
    }
    seconds = run_in_child(
        "tailor.stages.train", request, out_dir / "production.log", settings.train.threads
    )
    answer = json.loads((out_dir / PRODUCTION_FILE).read_text())
    return from_json(ProductionFit, answer), seconds


def _main() -> int:
    request = read_request()
    out_dir = Path(request["out_dir"])
    fit = train_production(
        from_json(PreparedData, request["prepared"]),
        Path(request["vectors_path"]),
        from_json(Trained, request["trained"]),
        Settings.model_validate(request["settings"]),
        out_dir,
        progress=False,
    )
    write_answer(out_dir / PRODUCTION_FILE, to_json(fit))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
