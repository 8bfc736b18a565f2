"""The default protocol: the sequential model and every baseline, ranked on the same cases.

Baselines are searched on validation (a grid per baseline), refit on train + validation and
scored on test; the sequential model was early-stopped on validation and refit the same way.
Every list goes through `tailor.ranking.rank` (the sequential model through an index over its
item vectors, exactly as it is served; baselines from their dense scores), and the served model
through the tail-aware re-ranking it is served with. The sweep shows what that knob trades.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tailor.data.protocol import Histories
from tailor.evaluation.metrics import per_user_metric, ranking_metrics
from tailor.models.baselines import DEFAULT_GRIDS, fit_baseline
from tailor.models.index import build_tuned_index
from tailor.models.sequential import fit_recipe
from tailor.ranking.rank import Ranked, RankPolicy, rank_dense, rank_histories, rerank_pool
from tailor.ranking.tail import head_mask, item_popularity
from tailor.settings import EvalSettings, IndexSettings, RerankSettings, TrainSettings

log = logging.getLogger(__name__)

SEQUENTIAL = "tailor-seq"
SASREC = "sasrec"  # the same network on item ids only: what the text adds is the difference
GRU4REC = "gru4rec"  # the same recipe on ids with a GRU reading the history
# The id-only sequential baselines and what reads their histories (`train.sequence`).
ID_SEQUENTIAL = {SASREC: "transformer", GRU4REC: "gru"}


@dataclass(frozen=True)
class Trial:
    """One point of a baseline's grid search, scored on validation."""

    model: str
    params: dict[str, Any]
    valid_ndcg_at_10: float


@dataclass
class Comparison:
    """Every model's metrics on the protocol's cases, and the lists they came from."""

    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> metric -> value
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> chosen parameters
    trials: list[Trial] = field(default_factory=list)
    test_tops: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (test users, k)
    cold_tops: dict[str, np.ndarray] = field(default_factory=dict)
    sweep: list[dict[str, float]] = field(default_factory=list)  # re-ranking strength -> test
    evaluated: dict[str, Any] = field(default_factory=dict)  # sequential models, by name


class Exam:
    """The protocol's cases (validation, test, cold items) and how lists on them are scored."""

    def __init__(self, hist: Histories, eval_settings: EvalSettings) -> None:
        self.hist = hist
        self.settings = eval_settings
        self.k = max(eval_settings.ks)
        # Popularity counts positives: what people chose, the same rule models learn by.
        positives = hist.train_positives()
        self.popularity = item_popularity(
            np.concatenate(positives) if positives else np.zeros(0, np.int64), hist.n_items
        )
        self.is_tail = ~head_mask(self.popularity, eval_settings.head_share)
        self.cases = {
            "valid": (hist.valid_history(), hist.valid_targets),
            "test": (hist.test_history(), hist.test_targets),
            "cold": (hist.cold_histories, hist.cold_targets),
        }

    def policy(self, rerank: RerankSettings | None, strength: float | None = None) -> RankPolicy:
        """Lists of length max(eval.ks); `rerank` None = the model's own order."""
        if rerank is None:
            return RankPolicy(self.k)
        chosen = rerank.strength if strength is None else strength
        return RankPolicy(self.k, chosen, rerank.candidates, self.is_tail)

    def measure(self, tops: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics per split: valid_* and test_* in full, cold-item recall for the cold cases."""
        values: dict[str, float] = {}
        s = self.settings
        for split, top in tops.items():
            targets = self.cases[split][1]
            if len(targets) == 0:
                continue
            found = ranking_metrics(
                top, targets, self.popularity, s.head_share, s.ks, len(self.hist.users)
            )
            if split == "cold":
                values.update({f"cold_recall_at_{k}": found[f"recall_at_{k}"] for k in s.ks})
            else:
                values.update({f"{split}_{key}": v for key, v in found.items()})
        return values

    def ndcg_at_10(self, top: np.ndarray, split: str = "valid") -> float:
        targets = self.cases[split][1]
        return float(per_user_metric(top, targets, "ndcg", 10).mean()) if len(targets) else 0.0

    def fit(self, text_vectors: np.ndarray, settings: TrainSettings, seed: int, progress=False):
        """The evaluation recipe (`fit_recipe`) on this exam's cases: early-stopped on the
        validation events, refit on train + validation. Every sequential model of a run (the
        model itself, the id-only baselines, the ablation's rows) is trained by this."""
        hist = self.hist
        return fit_recipe(
            text_vectors,
            settings,
            seed,
            hist.train,
            hist.train_liked,
            hist.train_and_valid(),
            hist.train_and_valid_liked(),
            self.validation_score if len(hist.valid_users) else None,
            progress=progress,
        )

    def validation_score(self, model) -> float:
        """Validation NDCG@10 of the model's own order: what early stopping keeps the best
        epoch by, for the sequential model and the id-only baseline alike."""
        return self.ndcg_at_10(rank_dense(model, self.cases["valid"][0], self.policy(None)).items)


def served_index(model, histories, index_settings: IndexSettings, seed: int):
    """The index a model would be served with (`build_tuned_index`), as the train flow does."""
    return build_tuned_index(model, histories, index_settings, seed)[0]


def rank_vector_model(
    model, histories, policy: RankPolicy, index_settings: IndexSettings, seed: int
) -> Ranked:
    """Lists of a model with user and item vectors through an index, as it is served."""
    index = served_index(model, histories, index_settings, seed)
    return rank_histories(model, index, histories, policy)


def evaluate_models(
    exam: Exam,
    text_vectors: np.ndarray,
    valid_model,
    served_model,
    chosen: dict[str, Any],
    rerank: RerankSettings,
    index: IndexSettings,
    seed: int,
    frozen_vectors: np.ndarray | None = None,
    train: TrainSettings | None = None,
    fitted: BaselineFits | None = None,
) -> Comparison:
    """The sequential model (validation from `valid_model`, test and cold from `served_model`)
    and every baseline of `exam.settings.baselines`.

    `text_vectors` are what the model read; when they came from a tuned encoder,
    `frozen_vectors` are the pre-trained encoder's: `text-cosine` reads those (text as it
    comes) and `text-cosine-tuned` shows what the tuning alone does for a text-only model.
    `sasrec` and `gru4rec` are trained with `train` (the sequential model's settings, its
    budget included) with the text switched off (and a GRU for `gru4rec`). `fitted` holds
    those fits and the baselines' searches when they were done ahead (`fit_baselines`, in
    another process beside the evaluation fit); without it they are done here.
    """
    out = Comparison()
    served = exam.policy(rerank)
    # One index per model, as each would be served (built once: HNSW builds are not cheap).
    valid_index = served_index(valid_model, exam.cases["valid"][0], index, seed)
    item_index = served_index(served_model, exam.cases["test"][0], index, seed)
    # The test users' candidates are searched once, for the served lists and the sweep.
    test_h, targets = exam.cases["test"]
    pool_size = exam.policy(rerank, 1.0).pool
    test_pool = rank_histories(served_model, item_index, test_h, RankPolicy(pool_size))
    tops = {
        "valid": rank_histories(valid_model, valid_index, exam.cases["valid"][0], served),
        "test": rerank_pool(test_pool, served),
        "cold": rank_histories(served_model, item_index, exam.cases["cold"][0], served),
    }
    tops = {split: ranked.items for split, ranked in tops.items()}
    out.metrics[SEQUENTIAL] = exam.measure(tops)
    out.evaluated[SEQUENTIAL] = served_model
    out.test_tops[SEQUENTIAL], out.cold_tops[SEQUENTIAL] = tops["test"], tops["cold"]
    out.params[SEQUENTIAL] = {"rerank.strength": rerank.strength, **chosen}

    if fitted is None:
        fitted = fit_baselines(exam, text_vectors, train, seed, frozen_vectors)
    # Baselines are fitted on positives (what they learn to predict) and, like every model,
    # read every event of a history as input.
    hist = exam.hist
    fit_histories, refit_histories = hist.train_positives(), hist.train_and_valid_positives()
    plain = exam.policy(None)
    for name, vectors in baseline_vectors(exam, text_vectors, frozen_vectors).items():
        kind = "text-cosine" if name == "text-cosine-tuned" else name
        if kind in ID_SEQUENTIAL:
            valid_rec, refit_rec, out.params[name] = fitted.id_models[name]
        else:
            best, trials, valid_rec = fitted.searches[name]
            out.trials.extend(trials)
            out.params[name] = best
            if valid_rec is None:
                valid_rec = fit_baseline(kind, best, fit_histories, hist.n_items, vectors)
            refit_rec = fit_baseline(kind, best, refit_histories, hist.n_items, vectors)
        tops = {
            "valid": rank_dense(valid_rec, exam.cases["valid"][0], plain).items,
            "test": rank_dense(refit_rec, exam.cases["test"][0], plain).items,
            "cold": rank_dense(refit_rec, exam.cases["cold"][0], plain).items,
        }
        out.metrics[name] = exam.measure(tops)
        out.test_tops[name], out.cold_tops[name] = tops["test"], tops["cold"]
        if kind in ID_SEQUENTIAL:
            out.evaluated[name] = refit_rec

    # The re-ranking knob: what accuracy buys what tail share, on test.
    s = exam.settings
    for strength in rerank.sweep:
        top = rerank_pool(test_pool, exam.policy(rerank, strength))
        found = ranking_metrics(
            top.items, targets, exam.popularity, s.head_share, s.ks, len(hist.users)
        )
        out.sweep.append({"strength": strength, **found})
    return out


@dataclass
class BaselineFits:
    """What `evaluate_models` fits of the baselines before it scores them: the id-only
    sequential models (valid model, refit model, parameters) and every other baseline's
    search (chosen parameters, trials, and the chosen point's model on the training positives
    when it is at hand; None means refit it)."""

    id_models: dict[str, tuple[Any, Any, dict[str, Any]]] = field(default_factory=dict)
    searches: dict[str, tuple[dict[str, Any], list[Trial], Any]] = field(default_factory=dict)


def baseline_vectors(
    exam: Exam, text_vectors: np.ndarray, frozen_vectors: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Each configured baseline and the item vectors it reads (`text-cosine` reads the
    pre-trained encoder's when the model's came from a tuned one; then `text-cosine-tuned`
    reads the tuned ones)."""
    baselines = {name: text_vectors for name in exam.settings.baselines}
    if frozen_vectors is not None and "text-cosine" in baselines:
        baselines["text-cosine"] = frozen_vectors
        baselines["text-cosine-tuned"] = text_vectors
    return baselines


def fit_baselines(
    exam: Exam,
    text_vectors: np.ndarray,
    train: TrainSettings | None,
    seed: int,
    frozen_vectors: np.ndarray | None = None,
) -> BaselineFits:
    """The baselines' expensive part, independent of the sequential model: the id-only
    sequential fits and the grid searches on validation."""
    fits = BaselineFits()
    for name, vectors in baseline_vectors(exam, text_vectors, frozen_vectors).items():
        kind = "text-cosine" if name == "text-cosine-tuned" else name
        if kind in ID_SEQUENTIAL:
            fits.id_models[name] = train_id_sequential(
                exam, vectors, train, seed, ID_SEQUENTIAL[kind]
            )
        else:
            fits.searches[name] = search_baseline(kind, exam, vectors)
    return fits


def train_id_sequential(
    exam: Exam,
    text_vectors: np.ndarray,
    train: TrainSettings | None,
    seed: int,
    sequence: str = "transformer",
):
    """A sequential model on item ids with full-softmax cross-entropy: SASRec (the sequential
    model's network, text switched off) or GRU4Rec (`sequence="gru"`), by the same recipe and
    budget as the sequential model: (early-stopped, evaluated, its parameters for the child
    run)."""
    train = train or TrainSettings()
    update = {"text": False, "text_view_weight": 0.0, "id_gate": 0.0, "sequence": sequence}
    ids_only = train.model_copy(update=update)
    fitted = exam.fit(text_vectors, ids_only, seed)
    params = {
        "epochs": fitted.report.best_epoch,
        "epoch_budget": ids_only.epochs,
        "patience": ids_only.patience,
        **ids_only.model_dump(include={"sequence", "dim", "layers", "max_len", "dropout"}),
        **ids_only.model_dump(include={"learning_rate", "batch_size", "refit", "ensemble"}),
    }
    if sequence == "transformer":
        params["heads"] = ids_only.heads
    best, ran = fitted.report.best_epoch, len(fitted.report.losses)
    log.info("%s on ids: best epoch %d of %d", sequence, best, ran)
    return fitted.valid_model, fitted.evaluated, params


def search_baseline(name: str, exam: Exam, text_vectors: np.ndarray):
    """Grid search on the validation event; returns (best params, trials, the best point's
    model fitted on the training positives, or None when there was no search).

    Fits are deterministic, so the best point's model is the validation model as it is: the
    caller need not fit it again.
    """
    grid = DEFAULT_GRIDS.get(name, [{}]) if exam.settings.search_baselines else [{}]
    if len(grid) <= 1:
        return (grid[0] if grid else {}), [], None
    hist = exam.hist
    trials, best, best_rec = [], None, None
    for params in grid:
        rec = fit_baseline(name, params, hist.train_positives(), hist.n_items, text_vectors)
        score = exam.ndcg_at_10(rank_dense(rec, exam.cases["valid"][0], exam.policy(None)).items)
        trials.append(Trial(name, dict(params), score))
        log.info("searching %s %s: valid NDCG@10 %.4f", name, params, score)
        # Strictly greater: the first of equal scores wins, as max() over the trials would.
        if best is None or score > best.valid_ndcg_at_10:
            best, best_rec = trials[-1], rec
    return best.params, trials, best_rec
