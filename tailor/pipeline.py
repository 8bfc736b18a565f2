"""The stages of the pipeline as plain functions: paths in, paths and small summaries out.

Prefect tasks in `tasks/` wrap these one to one. Stages exchange files (Parquet, .npy, .faiss)
rather than in-memory objects, so task results stay small, cacheable and inspectable, and a
run's folder shows exactly what each stage produced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.settings import Settings

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class PreparedData:
    """Clean, split data of one run, as files."""

    interactions: Path  # clean interactions with C.SPLIT and "seq"
    items: Path  # clean items (C.ITEM_ID, C.TEXT, C.LABEL, ...), row = item position
    users: Path | None
    quarantine: Path
    report: dict[str, dict[str, Any]]
    n_users: int
    n_items: int
    n_interactions: int
    cold_events: Path | None = None  # events on items held out of training (cold-item protocol)
    n_cold_items: int = 0


def read_item_vectors(settings: Settings) -> pl.DataFrame | None:
    path = settings.data.item_vectors_path
    if path is None:
        return None
    from tailor.data import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"item vectors file {path} does not exist (setting data.item_vectors_path)")
    frame = pl.read_parquet(path)
    cols = settings.data.columns
    for name, setting in ((cols.item_id, "item_id"), (cols.vector, "vector")):
        if name not in frame.columns:
            raise DataError(
                f"item vectors file {path} has no column {name!r} "
                f"(setting data.columns.{setting}); columns present: {', '.join(frame.columns)}"
            )
    return frame.select(
        pl.col(cols.item_id).cast(pl.Utf8).alias(C.ITEM_ID),
        pl.col(cols.vector).alias(C.VECTOR),
    )


def clean_sources(settings: Settings):
    """The configured source plus the service's live log (items, events), cleaned."""
    from tailor.clean import clean_all
    from tailor.data import load_raw
    from tailor.livelog import LiveLog

    raw = load_raw(settings)
    vectors = read_item_vectors(settings)
    live = LiveLog(settings.live_url)
    try:
        live_items, live_events = live.items(), live.events()
    finally:
        live.dispose()
    if live_items.height or live_events.height:
        log.info(
            "the live log adds %d items and %d events (%r)",
            live_items.height,
            live_events.height,
            live,
        )
    return clean_all(
        raw,
        settings.data.timestamp_format,
        item_vectors=vectors,
        live_items=live_items,
        live_events=live_events,
        live_source=repr(live),
    )


def prepare_data(settings: Settings, out_dir: Path, hold_out_cold: bool = True) -> PreparedData:
    """Load the configured source, clean it (rejects to quarantine) and split it in time.

    With `hold_out_cold`, a seeded share of items (`eval.cold_item_share`) is taken out of the
    warm data entirely and their events kept apart for the cold-item protocol.
    """
    from tailor.protocol import choose_cold_items
    from tailor.split import split_leave_one_out

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = clean_sources(settings)
    share = settings.eval.cold_item_share if hold_out_cold else 0.0
    cold = choose_cold_items(clean.interactions, share, settings.seed)
    is_cold = pl.col(C.ITEM_ID).is_in(pl.lit(pl.Series(cold, dtype=pl.Utf8)).implode())
    split = split_leave_one_out(clean.interactions.filter(~is_cold), settings.seed)
    cold_events = clean.interactions.filter(is_cold)

    paths = {
        "interactions": out_dir / "interactions.parquet",
        "items": out_dir / "items.parquet",
        "quarantine": out_dir / "quarantine.parquet",
    }
    split.write_parquet(paths["interactions"])
    clean.items.write_parquet(paths["items"])
    clean.quarantine.write_parquet(paths["quarantine"])
    users_path = None
    if clean.users is not None:
        users_path = out_dir / "users.parquet"
        clean.users.write_parquet(users_path)
    (out_dir / "cleaning_report.json").write_text(json.dumps(clean.report, indent=2))
    cold_path = out_dir / "cold_events.parquet"
    cold_events.write_parquet(cold_path)
    return PreparedData(
        interactions=paths["interactions"],
        items=paths["items"],
        users=users_path,
        quarantine=paths["quarantine"],
        report=clean.report,
        n_users=split[C.USER_ID].n_unique(),
        n_items=clean.items.height,
        n_interactions=split.height + cold_events.height,
        cold_events=cold_path,
        n_cold_items=len(cold),
    )


def all_interactions(prepared: PreparedData) -> pl.DataFrame:
    """Warm and cold events together: everything known about users, for the refresh."""
    warm = pl.read_parquet(prepared.interactions).drop(C.SPLIT, "seq")
    if prepared.cold_events is None:
        return warm
    cold = pl.read_parquet(prepared.cold_events).select(warm.columns)
    return pl.concat([warm, cold]).sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)


# ---------------------------------------------------------------- embed


@dataclass(frozen=True)
class EmbeddedItems:
    vectors: Path  # (n_items, d) float32 .npy, rows in the items file's order
    n_embedded: int
    n_reused: int
    model_id: str


def item_texts_key(items_path: Path, settings: Settings) -> str:
    """Content key of an embedding job: the texts and everything that changes their vectors."""
    texts = pl.read_parquet(items_path, columns=[C.TEXT])[C.TEXT].to_list()
    digest = hashlib.sha256()
    digest.update(settings.embed.model_dump_json(exclude={"batch_size", "device"}).encode())
    digest.update(str(settings.data.item_vectors_path).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def tune_text_encoder(prepared: PreparedData, settings: Settings, progress: bool = True) -> str:
    """The encoder the embed stage should use: the configured one, or with
    `embed.tuning.enabled` a copy fine-tuned on this run's training events.

    The tuned copy is cached under the workdir by content (base encoder, tuning settings,
    seed, item texts, training histories), so a rerun on the same data reuses it.
    """
    if not settings.embed.tuning.enabled:
        return settings.embed.model
    import shutil

    from tailor.tune_encoder import fine_tune_encoder

    hist = load_histories(prepared)
    texts = pl.read_parquet(prepared.items, columns=[C.TEXT])[C.TEXT].to_list()
    digest = hashlib.sha256()
    digest.update(settings.embed.model_dump_json(include={"model", "max_length"}).encode())
    digest.update(settings.embed.tuning.model_dump_json().encode())
    digest.update(str(settings.seed).encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    for history in hist.train:
        digest.update(np.asarray(history, dtype=np.int64).tobytes() + b"|")
    folder = settings.cache_dir / "encoders" / digest.hexdigest()[:32]
    if (folder / "config.json").is_file():
        log.info("reusing the tuned encoder in %s", folder)
        return str(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    report = fine_tune_encoder(
        texts,
        hist.train,
        settings.embed,
        settings.embed.tuning,
        partial,
        settings.seed,
        progress=progress,
    )
    log.info("tuned the encoder in %.0f s, loss per epoch %s", report.seconds, report.losses)
    # Renamed into place only when complete: a crash never leaves a half-saved encoder.
    os.replace(partial, folder)
    return str(folder)


def embed_items(items_path: Path, settings: Settings, progress: bool = True) -> EmbeddedItems:
    """Vectors for every item: the language model (with its cache), or the user's own file."""
    key = item_texts_key(items_path, settings)
    out = settings.cache_dir / "item_vectors" / f"{key}.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    items = pl.read_parquet(items_path)

    user_vectors = read_item_vectors(settings)
    if user_vectors is not None:
        aligned = items.select(C.ITEM_ID).join(user_vectors, on=C.ITEM_ID, how="left")
        matrix = np.asarray(aligned[C.VECTOR].to_list(), dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.clip(norms, 1e-12, None)
        _save_npy(out, matrix)
        return EmbeddedItems(out, 0, 0, f"file:{settings.data.item_vectors_path}")

    from tailor.embed import EmbeddingCache, LazyEncoder, embed_texts

    encoder = LazyEncoder(settings.embed)
    cache = EmbeddingCache(settings.cache_dir / "embeddings", encoder.model_id)
    result = embed_texts(items[C.TEXT].to_list(), encoder, cache, progress=progress)
    _save_npy(out, result.vectors)
    return EmbeddedItems(out, result.n_embedded, result.n_reused, encoder.model_id)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


# ---------------------------------------------------------------- histories


def load_histories(prepared: PreparedData):
    """The evaluation protocol's histories (see `tailor.protocol`)."""
    from tailor.protocol import build_histories

    cold = pl.read_parquet(prepared.cold_events) if prepared.cold_events else None
    return build_histories(
        pl.read_parquet(prepared.interactions), pl.read_parquet(prepared.items), cold
    )


# ---------------------------------------------------------------- fine-tune


@dataclass(frozen=True)
class FineTuned:
    model_dir: Path  # the model evaluated on test and served (refit on train + valid)
    valid_model_dir: Path  # the model trained on train only, early-stopped on validation
    losses: list[float]
    valid_scores: list[float]
    best_epoch: int
    seconds: float


def fine_tune(
    prepared: PreparedData,
    vectors_path: Path,
    settings: Settings,
    out_dir: Path,
    progress: bool = True,
) -> FineTuned:
    """Train on train events, early-stop on validation; then refit on train + validation.

    With `train.ensemble` the served model is the mean of the two (the early-stopped one and
    its refit): two models that saw different data disagree where either
    is unsure, and their mean is steadier from run to run than either alone.
    """
    from tailor.model import EnsembleRecommender, SeqRecommender

    hist = load_histories(prepared)
    text_vectors = np.load(vectors_path)
    valid_history = hist.valid_history()

    def valid_ndcg(model: SeqRecommender) -> float:
        top = rank_items(model, valid_history, settings)
        return _ndcg_at_10(top, hist.valid_targets)

    model = SeqRecommender(text_vectors, settings.train, seed=settings.seed)
    report = model.fit(
        hist.train,
        seed=settings.seed,
        valid_fn=valid_ndcg if len(hist.valid_users) else None,
        progress=progress,
    )
    valid_dir = Path(out_dir) / "model_valid"
    model.save(valid_dir)
    seconds = report.seconds
    serve_dir = valid_dir
    if settings.train.refit and len(hist.valid_users):
        epochs = settings.train.model_copy(update={"epochs": report.best_epoch})
        refit = SeqRecommender(text_vectors, epochs, seed=settings.seed)
        seconds += refit.fit(hist.train_and_valid(), seed=settings.seed, progress=progress).seconds
        serve_dir = Path(out_dir) / "model"
        served = EnsembleRecommender([model, refit]) if settings.train.ensemble else refit
        served.save(serve_dir)
    return FineTuned(
        model_dir=serve_dir,
        valid_model_dir=valid_dir,
        losses=report.losses,
        valid_scores=report.valid_scores,
        best_epoch=report.best_epoch,
        seconds=seconds,
    )


@dataclass(frozen=True)
class SearchTrial:
    params: dict[str, Any]  # the train.* values this trial set
    metrics: dict[str, float]  # valid_ndcg_at_10 (the objective), tail and cold recall, ...
    best_epoch: int
    seconds: float


def run_search_trial(
    prepared: PreparedData, vectors_path: Path, settings: Settings, params: dict[str, Any]
) -> SearchTrial:
    """Train with `params` on train events, early-stopped on validation; validation metrics.

    Cold-item recall is measured too (the cold events are outside training either way), so a
    trial that buys accuracy with new-item reach shows it.
    """
    from tailor.evaluate import item_popularity, per_user_metric, ranking_metrics
    from tailor.model import SeqRecommender
    from tailor.settings import TrainSettings

    # Validated, so a bad grid value fails with the field's own message.
    train_settings = TrainSettings.model_validate({**settings.train.model_dump(), **params})
    trial_settings = settings.model_copy(update={"train": train_settings})
    hist = load_histories(prepared)
    text_vectors = np.load(vectors_path)
    popularity = item_popularity(np.concatenate(hist.train), hist.n_items)
    valid_history = hist.valid_history()

    def stop_on(model: SeqRecommender) -> float:
        # The same early-stopping score as `fine_tune`, so a trial is the model it would train.
        return _ndcg_at_10(rank_items(model, valid_history, trial_settings), hist.valid_targets)

    model = SeqRecommender(text_vectors, train_settings, seed=settings.seed)
    report = model.fit(hist.train, seed=settings.seed, valid_fn=stop_on)
    top = rank_items(model, valid_history, trial_settings, popularity)
    found = ranking_metrics(
        top,
        hist.valid_targets,
        popularity,
        settings.eval.head_share,
        settings.eval.ks,
        len(hist.users),
    )
    metrics = {f"valid_{key}": value for key, value in found.items()}
    if len(hist.cold_targets):
        k = max(settings.eval.ks)
        cold = rank_items(model, hist.cold_histories, trial_settings, popularity)
        metrics[f"cold_recall_at_{k}"] = float(
            per_user_metric(cold, hist.cold_targets, "recall", k).mean()
        )
    return SearchTrial(dict(params), metrics, report.best_epoch, report.seconds)


def _ndcg_at_10(top: np.ndarray, targets: np.ndarray) -> float:
    from tailor.evaluate import per_user_metric

    return float(per_user_metric(top, targets, "ndcg", 10).mean()) if len(targets) else 0.0


def rank_items(
    model,
    histories,
    settings: Settings,
    popularity: np.ndarray | None = None,
    strength: float | None = None,
    batch_users: int = 1024,
) -> np.ndarray:
    """Top-k (k = max eval k) per user with seen items excluded and tail-aware re-ranking.

    `popularity` defines head and tail (train counts); without it only the raw ranking is used.
    """
    from tailor.evaluate import head_mask, top_k
    from tailor.rerank import rerank_tail

    k = max(settings.eval.ks)
    strength = settings.rerank.strength if strength is None else strength
    out = []
    for start in range(0, len(histories), batch_users):
        chunk = histories[start : start + batch_users]
        scores = model.score(chunk)
        if popularity is None or strength == 0:
            out.append(top_k(scores, chunk, k))
            continue
        is_tail = ~head_mask(popularity, settings.eval.head_share)
        n_cand = min(settings.rerank.candidates, scores.shape[1])
        candidates = top_k(scores, chunk, n_cand)
        gathered = np.take_along_axis(scores, candidates.clip(min=0), axis=1)
        gathered[candidates < 0] = -np.inf
        out.append(rerank_tail(candidates, gathered, is_tail, strength, k))
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


# ---------------------------------------------------------------- index


def build_item_index(
    model_dir: Path, vectors_path: Path, settings: Settings, out_dir: Path
) -> Path:
    from tailor.index import build_index, save_index
    from tailor.model import load_recommender

    model = load_recommender(model_dir, np.load(vectors_path), device="cpu")
    index = build_index(model.item_vectors(), settings.index, seed=settings.seed)
    return save_index(index, Path(out_dir) / "index.faiss")


# ---------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class Trial:
    model: str
    params: dict[str, Any]
    valid_ndcg_at_10: float


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, dict[str, float]]  # model -> {"valid_ndcg_at_10": ..., "test_...": ...}
    params: dict[str, dict[str, Any]]  # model -> chosen hyper-parameters
    trials: list[Trial]  # every tuning trial, for child runs
    significance: dict[str, dict[str, Any]]  # claim -> vs, ratio, gain, low, high
    sweep: list[dict[str, float]]  # re-ranking strength -> test metrics
    table: Path  # markdown comparison table
    plot: Path  # long-tail curve with exposure overlaid
    tradeoff: Path  # accuracy against tail share as the re-ranking strength moves
    sample: Path  # a sample of test-time recommendations, with labels
    primary: str  # the fine-tuned model's name in `metrics`


def evaluate_models(
    prepared: PreparedData,
    vectors_path: Path,
    tuned: FineTuned,
    settings: Settings,
    out_dir: Path,
    frozen_vectors_path: Path | None = None,
) -> Evaluation:
    """The default protocol: the fine-tuned model and every baseline, on the same splits.

    `vectors_path` holds the text vectors the model was trained on. When those came from a
    tuned encoder, `frozen_vectors_path` holds the pre-trained encoder's: the text-cosine
    baseline reads those (text as it comes), and `text-cosine-tuned` shows what the tuning
    alone does for a text-only model.

    Baselines are tuned on validation, refit on train + validation and scored on test; the
    fine-tuned model was early-stopped on validation and refit the same way. Everything served
    goes through the same tail-aware re-ranking; the sweep shows what the knob trades.
    """
    from tailor.evaluate import EvalResult, exposure, head_mask, item_popularity, ranking_metrics
    from tailor.model import SeqRecommender, load_recommender
    from tailor.plots import plot_long_tail, plot_tradeoff

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hist = load_histories(prepared)
    text_vectors = np.load(vectors_path)
    popularity = item_popularity(np.concatenate(hist.train), hist.n_items)
    ks = sorted(settings.eval.ks)
    head_share = settings.eval.head_share
    n_users = len(hist.users)
    is_tail = ~head_mask(popularity, head_share)

    valid_h, test_h = hist.valid_history(), hist.test_history()
    cases = {
        "valid": (valid_h, hist.valid_targets),
        "test": (test_h, hist.test_targets),
        "cold": (hist.cold_histories, hist.cold_targets),
    }

    def measure(tops: dict[str, np.ndarray]) -> dict[str, float]:
        values: dict[str, float] = {}
        for split, top in tops.items():
            targets = cases[split][1]
            if len(targets) == 0:
                continue
            found = ranking_metrics(top, targets, popularity, head_share, ks, n_users)
            if split == "cold":
                values.update({f"cold_recall_at_{k}": found[f"recall_at_{k}"] for k in ks})
            else:
                values.update({f"{split}_{key}": v for key, v in found.items()})
        return values

    metrics: dict[str, dict[str, float]] = {}
    test_tops: dict[str, np.ndarray] = {}
    cold_tops: dict[str, np.ndarray] = {}
    params: dict[str, dict[str, Any]] = {}
    trials: list[Trial] = []

    # The fine-tuned model: validation from the early-stopped one, test and cold from the refit.
    primary = SeqRecommender.name
    valid_model = load_recommender(tuned.valid_model_dir, text_vectors, settings.train.device)
    serve_model = load_recommender(tuned.model_dir, text_vectors, settings.train.device)
    tops = {
        "valid": rank_items(valid_model, valid_h, settings, popularity),
        "test": rank_items(serve_model, test_h, settings, popularity),
        "cold": rank_items(serve_model, hist.cold_histories, settings, popularity),
    }
    metrics[primary] = measure(tops)
    test_tops[primary], cold_tops[primary] = tops["test"], tops["cold"]
    params[primary] = {"rerank.strength": settings.rerank.strength, "epochs": tuned.best_epoch}

    # Baselines: tuned on validation, refit on train + validation, scored on test and cold.
    refit_histories = hist.train_and_valid()
    baselines = {name: text_vectors for name in settings.eval.baselines}
    tuned_text = frozen_vectors_path is not None and Path(frozen_vectors_path) != Path(vectors_path)
    if tuned_text and "text-cosine" in baselines:
        baselines["text-cosine"] = np.load(frozen_vectors_path)
        baselines["text-cosine-tuned"] = text_vectors
    for name, name_vectors in baselines.items():
        kind = "text-cosine" if name == "text-cosine-tuned" else name
        best, name_trials = tune_baseline(kind, hist, name_vectors, settings)
        trials.extend(name_trials)
        params[name] = best
        valid_rec = fit_baseline(kind, best, hist.train, hist.n_items, name_vectors)
        refit_rec = fit_baseline(kind, best, refit_histories, hist.n_items, name_vectors)
        tops = {
            "valid": rank_items(valid_rec, valid_h, settings, strength=0.0),
            "test": rank_items(refit_rec, test_h, settings, strength=0.0),
            "cold": rank_items(refit_rec, hist.cold_histories, settings, strength=0.0),
        }
        metrics[name] = measure(tops)
        test_tops[name], cold_tops[name] = tops["test"], tops["cold"]

    # The re-ranking knob: what accuracy buys what tail share, on test.
    sweep = []
    for strength in settings.rerank.sweep:
        top = rank_items(serve_model, test_h, settings, popularity, strength=strength)
        found = ranking_metrics(top, hist.test_targets, popularity, head_share, ks, n_users)
        sweep.append({"strength": strength, **found})

    significance = _significance(primary, metrics, test_tops, cold_tops, hist, is_tail, settings)

    k_max = max(ks)
    table = out_dir / "evaluation.md"
    table.write_text(
        _evaluation_markdown(metrics, params, significance, sweep, primary, hist, prepared, ks)
    )
    results = [EvalResult(name, {}, top) for name, top in test_tops.items()]
    plot = plot_long_tail(
        popularity,
        {r.name: exposure(r.top[:, :k_max], hist.n_items) for r in results},
        out_dir / "long_tail.png",
        head_share=head_share,
        title=f"Train popularity and exposure in test-time top-{k_max} lists",
    )
    tradeoff = plot_tradeoff(
        [row["strength"] for row in sweep],
        [row["ndcg_at_10"] for row in sweep],
        [row[f"aplt_at_{k_max}"] for row in sweep],
        out_dir / "rerank_tradeoff.png",
        tail_name=f"APLT@{k_max}",
        chosen=settings.rerank.strength,
        baseline_points={
            name: (m.get(f"test_aplt_at_{k_max}", 0.0), m.get("test_ndcg_at_10", 0.0))
            for name, m in metrics.items()
            if name != primary
        },
    )
    sample = _write_sample(prepared, hist, test_tops[primary], out_dir)
    return Evaluation(
        metrics=metrics,
        params=params,
        trials=trials,
        significance=significance,
        sweep=sweep,
        table=table,
        plot=plot,
        tradeoff=tradeoff,
        sample=sample,
        primary=primary,
    )


def fit_baseline(name: str, params: dict[str, Any], histories, n_items: int, text_vectors):
    from tailor.baselines import MostPopular, TextCosine, make_baseline
    from tailor.evaluate import item_popularity

    if name == "most-popular":
        items = np.concatenate(histories) if len(histories) else np.zeros(0, dtype=np.int64)
        return MostPopular(item_popularity(items, n_items))
    if name == "text-cosine":
        return TextCosine(text_vectors)
    return make_baseline(name, **params).fit(histories, n_items)


def tune_baseline(name: str, hist, text_vectors, settings: Settings):
    """Grid search on the validation event; returns (best params, trials)."""
    from tailor.baselines import DEFAULT_GRIDS

    grid = DEFAULT_GRIDS.get(name, [{}]) if settings.eval.tune_baselines else [{}]
    if len(grid) <= 1:
        return (grid[0] if grid else {}), []
    valid_h = hist.valid_history()
    trials = []
    for params in grid:
        rec = fit_baseline(name, params, hist.train, hist.n_items, text_vectors)
        score = _ndcg_at_10(rank_items(rec, valid_h, settings, strength=0.0), hist.valid_targets)
        trials.append(Trial(name, dict(params), score))
        log.info("tuning %s %s: valid NDCG@10 %.4f", name, params, score)
    best = max(trials, key=lambda t: t.valid_ndcg_at_10)
    return best.params, trials


def _significance(
    primary: str,
    metrics: dict[str, dict[str, float]],
    test_tops: dict[str, np.ndarray],
    cold_tops: dict[str, np.ndarray],
    hist,
    is_tail: np.ndarray,
    settings: Settings,
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap over users (cold: over cases) for each claim the targets make.

    Returns {claim: {"vs": baseline, "ratio", "gain", "low", "high"}}; a gain is real when
    "low" (the lower end of the 95 % interval of the per-user difference) is above zero.
    """
    from tailor.evaluate import paired_bootstrap, per_user_metric

    out: dict[str, dict[str, Any]] = {}
    baselines = [m for m in metrics if m != primary]
    if not baselines or len(hist.test_targets) == 0:
        return out

    def record(claim: str, other: str, a: np.ndarray, b: np.ndarray) -> None:
        gain, low, high = paired_bootstrap(
            a, b, n_resamples=settings.eval.bootstrap_resamples, seed=settings.seed
        )
        base = float(b.mean())
        ratio = float(a.mean() / base) if base > 0 else float("inf")
        out[claim] = {"vs": other, "ratio": ratio, "gain": gain, "low": low, "high": high}

    def best_by(key: str) -> str:
        return max(baselines, key=lambda m: metrics[m].get(key, 0.0))

    targets = hist.test_targets
    best = best_by("test_ndcg_at_10")
    record(
        "ndcg_at_10",
        best,
        per_user_metric(test_tops[primary], targets, "ndcg", 10),
        per_user_metric(test_tops[best], targets, "ndcg", 10),
    )
    tail = is_tail[targets]
    if tail.any():
        best = best_by("test_tail_recall_at_20")
        record(
            "tail_recall_at_20",
            best,
            per_user_metric(test_tops[primary][tail], targets[tail], "recall", 20),
            per_user_metric(test_tops[best][tail], targets[tail], "recall", 20),
        )
    if len(hist.cold_targets) and "text-cosine" in cold_tops:
        record(
            "cold_recall_at_20",
            "text-cosine",
            per_user_metric(cold_tops[primary], hist.cold_targets, "recall", 20),
            per_user_metric(cold_tops["text-cosine"], hist.cold_targets, "recall", 20),
        )
    return out


def _evaluation_markdown(metrics, params, significance, sweep, primary, hist, prepared, ks) -> str:
    k = max(ks)
    cols = [
        ("NDCG@10", "test_ndcg_at_10"),
        ("Recall@10", "test_recall_at_10"),
        (f"Recall@{k}", f"test_recall_at_{k}"),
        ("MRR@10", "test_mrr_at_10"),
        (f"coverage@{k}", f"test_coverage_at_{k}"),
        (f"tail-recall@{k}", f"test_tail_recall_at_{k}"),
        (f"APLT@{k}", f"test_aplt_at_{k}"),
        (f"novelty@{k}", f"test_novelty_at_{k}"),
        (f"cold-recall@{k}", f"cold_recall_at_{k}"),
        ("valid NDCG@10", "valid_ndcg_at_10"),
    ]
    lines = [
        f"Test: {len(hist.test_targets)} users (temporal leave-one-out, full ranking over "
        f"{hist.n_items} items, seen items excluded). Cold: {len(hist.cold_targets)} events on "
        f"{prepared.n_cold_items} items held out of training.",
        "",
        "| model | " + " | ".join(c[0] for c in cols) + " | chosen parameters |",
        "| --- | " + " | ".join("---:" for _ in cols) + " | --- |",
    ]
    for name, values in metrics.items():
        cells = [f"{values.get(key, float('nan')):.4f}" for _, key in cols]
        chosen = ", ".join(f"{p}={v}" for p, v in params.get(name, {}).items())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {chosen} |")
    if significance:
        lines += ["", "Paired bootstrap (95 % interval of the per-user difference):", ""]
        lines += [
            "| claim | vs | ratio | gain | 95 % interval |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for claim, sig in significance.items():
            lines.append(
                f"| {primary} {claim} | {sig['vs']} | {sig['ratio']:.2f}x | {sig['gain']:+.4f} "
                f"| [{sig['low']:+.4f}, {sig['high']:+.4f}] |"
            )
    lines += ["", "Re-ranking strength (test):", ""]
    lines += [f"| strength | NDCG@10 | Recall@{k} | tail-recall@{k} | coverage@{k} | APLT@{k} |"]
    lines += ["| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in sweep:
        lines.append(
            f"| {row['strength']:.2f} | {row['ndcg_at_10']:.4f} | {row[f'recall_at_{k}']:.4f} "
            f"| {row[f'tail_recall_at_{k}']:.4f} | {row[f'coverage_at_{k}']:.4f} "
            f"| {row[f'aplt_at_{k}']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _write_sample(prepared: PreparedData, hist, top: np.ndarray, out_dir: Path) -> Path:
    items = pl.read_parquet(prepared.items, columns=[C.ITEM_ID, C.LABEL])
    labels = items[C.LABEL].to_list()
    rows = []
    for row, user_row in enumerate(hist.test_users[:25]):
        for rank, item in enumerate(top[row, :10], start=1):
            if item < 0:
                continue
            rows.append(
                {
                    C.USER_ID: hist.users[user_row],
                    C.RANK: rank,
                    C.LABEL: labels[item],
                    "held_out": labels[hist.test_targets[row]],
                    "hit": bool(item == hist.test_targets[row]),
                }
            )
    path = out_dir / "sample_recommendations.csv"
    pl.DataFrame(rows).write_csv(path)
    return path


def score_champion(
    prepared: PreparedData, bundle_dir: Path, settings: Settings
) -> dict[str, float]:
    """The current champion's test metrics on this run's test cases (the same protocol).

    Its stored metrics came from its own run's data and split, so comparing against them
    would compare different exams. Histories and results are mapped through item ids; items
    the champion never saw are dropped from histories and can never be found by it.
    """
    from tailor.bundle import Bundle
    from tailor.evaluate import item_popularity, ranking_metrics

    hist = load_histories(prepared)
    bundle = Bundle(bundle_dir, device="cpu")
    ids = pl.read_parquet(prepared.items, columns=[C.ITEM_ID])[C.ITEM_ID].to_list()
    ours = {item: pos for pos, item in enumerate(ids)}
    k = max(settings.eval.ks)
    histories = [bundle.positions([ids[i] for i in h]) for h in hist.test_history()]
    found = bundle.recommend(
        histories,
        k,
        strength=settings.rerank.strength,
        candidates=settings.rerank.candidates,
        head_share=settings.eval.head_share,
    ).items
    top = np.array(
        [[ours.get(bundle.item_ids[i], -1) if i >= 0 else -1 for i in row] for row in found],
        dtype=np.int64,
    ).reshape(len(histories), k)
    popularity = item_popularity(np.concatenate(hist.train), hist.n_items)
    values = ranking_metrics(
        top,
        hist.test_targets,
        popularity,
        settings.eval.head_share,
        settings.eval.ks,
        len(hist.users),
    )
    return {f"test_{key}": value for key, value in values.items()}


# ---------------------------------------------------------------- bundle


def assemble_bundle(
    prepared: PreparedData,
    vectors_path: Path,
    model_dir: Path,
    index_path: Path,
    settings: Settings,
    out_dir: Path,
) -> Path:
    """Gather what the refresh and the registry need into one folder."""
    import shutil

    from tailor.bundle import write_bundle
    from tailor.evaluate import item_popularity
    from tailor.index import load_index
    from tailor.model import load_recommender

    hist = load_histories(prepared)
    text_vectors = np.load(vectors_path)
    popularity = item_popularity(np.concatenate(hist.train), hist.n_items)
    model = load_recommender(model_dir, text_vectors, device="cpu")
    folder = Path(out_dir) / "bundle"
    if folder.exists():
        shutil.rmtree(folder)
    return write_bundle(
        folder,
        pl.read_parquet(prepared.items),
        popularity,
        text_vectors,
        model,
        load_index(index_path),
        settings.model_dump_json(indent=2),
    )


# ---------------------------------------------------------------- cold start, service path


@dataclass(frozen=True)
class ColdStart:
    metrics: dict[str, float]
    table: Path  # markdown summary


def evaluate_cold_start(
    prepared: PreparedData, bundle_dir: Path, settings: Settings, out_dir: Path
) -> ColdStart:
    """Cold start measured through the live service's own code (`tailor.live`).

    - New users: each test user is treated as unknown (history hidden); their vector is the
      profile-neighbour mean of the other users' vectors, as `POST /recommend` with only a
      profile computes it. Compared with most-popular on the same test events.
    - New items: the held-out cold items are removed from the catalogue and inserted back the
      way `POST /items` does (text -> encoder -> text-view vector -> index), then the cold-item
      cases of the offline protocol are ranked. The same recall as offline means the insert
      path loses nothing.
    """
    from tailor.bundle import Bundle
    from tailor.evaluate import paired_bootstrap
    from tailor.live import LiveModel, ProfilePool, TextVectors, has_text_space, profile_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hist = load_histories(prepared)
    bundle = Bundle(bundle_dir, device="cpu")
    embed = settings.embed.model_validate(bundle.settings.get("embed", {}))
    # The encoder the service would use (settings.serve), so this measures the service path.
    texts = TextVectors(
        embed.model_copy(update={"device": "auto"}),
        cache_size=0,
        backend=settings.serve.encoder_backend,
        cache_dir=settings.cache_dir,
    )
    k = max(settings.eval.ks)
    strength = settings.rerank.strength
    metrics: dict[str, float] = {}
    lines = [f"Cold start through the service path (recall@{k}).", ""]

    def recall(found: np.ndarray, targets: list[str], model: LiveModel) -> np.ndarray:
        ids = [[model.item_ids[p] for p in row if p >= 0] for row in found]
        return np.array([t in row for t, row in zip(targets, ids, strict=True)], dtype=float)

    # New users: profile only.
    fields = settings.serve.profile_fields
    users = pl.read_parquet(prepared.users) if prepared.users is not None else None
    present = [f for f in fields if users is not None and f in users.columns]
    if present and len(hist.test_users):
        model = LiveModel(bundle, "candidate", settings)
        profiles = {
            row[C.USER_ID]: profile_text(row, present)
            for row in users.select(C.USER_ID, *present).iter_rows(named=True)
        }
        known = hist.train_and_valid()
        pool_rows = [r for r, u in enumerate(hist.users) if profiles.get(u) and len(known[r])]
        pool_users = [hist.users[r] for r in pool_rows]
        unique = sorted({profiles[u] for u in pool_users})
        vectors = dict(zip(unique, texts.encode(unique), strict=True))
        model.profiles = pool = ProfilePool(
            pool_users,
            np.stack([vectors[profiles[u]] for u in pool_users]),
            [known[r] for r in pool_rows],
            len(model.item_ids),
            settings.serve.profile_neighbours,
            settings.serve.profile_prior,
        )
        rows = [i for i, r in enumerate(hist.test_users) if hist.users[r] in pool.row]
        test_users = [hist.users[hist.test_users[i]] for i in rows]
        targets = [model.item_ids[hist.test_targets[i]] for i in rows]
        scores = model.profile_scores(
            np.stack([vectors[profiles[u]] for u in test_users]), exclude=test_users
        )
        found, _ = model.rank_scores(scores, [()] * len(rows), k, strength)
        ours = recall(found, targets, model)
        popular = {model.item_ids[p] for p in model.popular[:k]}
        theirs = np.array([t in popular for t in targets], dtype=float)
        gain, low, high = paired_bootstrap(
            ours, theirs, n_resamples=settings.eval.bootstrap_resamples, seed=settings.seed
        )
        metrics[f"new_user_recall_at_{k}"] = float(ours.mean())
        metrics[f"new_user_popular_recall_at_{k}"] = float(theirs.mean())
        metrics["new_user_gain_low"] = low
        metrics["new_user_gain_high"] = high
        lines += [
            f"New users (profile only: {', '.join(present)}; {len(rows)} test users, history "
            f"hidden, {settings.serve.profile_neighbours} profile neighbours, prior "
            f"{settings.serve.profile_prior:g}):",
            "",
            "| ranking | recall | gain vs most-popular, 95 % interval |",
            "| --- | ---: | --- |",
            f"| profile neighbours | {ours.mean():.4f} | {gain:+.4f} [{low:+.4f}, {high:+.4f}] |",
            f"| most-popular | {theirs.mean():.4f} | |",
            "",
        ]

    # New items: inserted through the service path.
    if len(hist.cold_targets) and not has_text_space(bundle):
        lines += ["New items: not measured (item vectors came from a file, no encoder).", ""]
    elif len(hist.cold_targets):
        cold_ids = [bundle.item_ids[p] for p in hist.cold_items]
        # A bundle of its own: inserting grows the model it wraps.
        model = LiveModel(Bundle(bundle_dir, device="cpu"), "candidate", settings, hidden=cold_ids)
        rows = [
            (i, bundle.items[C.TEXT][int(p)], bundle.labels[int(p)])
            for i, p in zip(cold_ids, hist.cold_items, strict=True)
        ]
        inserted, _ = model.upsert_items(rows, texts.encode([r[1] for r in rows]))
        targets = [bundle.item_ids[t] for t in hist.cold_targets]
        cold_users = model.user_vectors(hist.cold_histories)
        seen = [set(h.tolist()) for h in hist.cold_histories]
        found, _ = model.search(cold_users, None, seen, k, strength)
        inserted_recall = recall(found, targets, model)
        offline = LiveModel(bundle, "candidate", settings)
        found, _ = offline.search(cold_users, None, seen, k, strength)
        offline_recall = recall(found, targets, offline)
        metrics[f"inserted_cold_recall_at_{k}"] = float(inserted_recall.mean())
        metrics[f"bundle_cold_recall_at_{k}"] = float(offline_recall.mean())
        lines += [
            f"New items: {len(inserted)} held-out items removed, then inserted like POST /items; "
            f"{len(targets)} cold-item events:",
            "",
            "| catalogue | cold-item recall |",
            "| --- | ---: |",
            f"| items inserted through the service | {inserted_recall.mean():.4f} |",
            f"| items in the bundle from training | {offline_recall.mean():.4f} |",
            "",
        ]
    table = out_dir / "cold_start.md"
    table.write_text("\n".join(lines))
    return ColdStart(metrics=metrics, table=table)
