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
from dataclasses import dataclass, field
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


def prepare_data(settings: Settings, out_dir: Path) -> PreparedData:
    """Load the configured source, clean it (rejects to quarantine) and split it in time."""
    from tailor.clean import clean_all
    from tailor.data import load_raw
    from tailor.split import split_leave_one_out

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = load_raw(settings)
    vectors = read_item_vectors(settings)
    clean = clean_all(raw, settings.data.timestamp_format, item_vectors=vectors)
    split = split_leave_one_out(clean.interactions, settings.seed)

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
    return PreparedData(
        interactions=paths["interactions"],
        items=paths["items"],
        users=users_path,
        quarantine=paths["quarantine"],
        report=clean.report,
        n_users=split[C.USER_ID].n_unique(),
        n_items=clean.items.height,
        n_interactions=split.height,
    )


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


@dataclass
class Histories:
    """Per-user item positions for training and the two held-out evaluations."""

    users: list[str]
    train: list[np.ndarray]  # train events, oldest first
    valid_users: np.ndarray  # rows of `users` that have a validation event
    valid_targets: np.ndarray
    test_users: np.ndarray
    test_targets: np.ndarray
    n_items: int

    def valid_history(self) -> list[np.ndarray]:
        return [self.train[u] for u in self.valid_users]

    def test_history(self) -> list[np.ndarray]:
        # The test event is predicted from everything before it, validation event included.
        return [np.append(self.train[u], self.valid_target_of[u]) for u in self.test_users]

    valid_target_of: dict[int, int] = field(default_factory=dict)


def build_histories(prepared: PreparedData) -> Histories:
    items = pl.read_parquet(prepared.items, columns=[C.ITEM_ID])
    position = {item: i for i, item in enumerate(items[C.ITEM_ID].to_list())}
    frame = pl.read_parquet(prepared.interactions).sort([C.USER_ID, "seq"])
    frame = frame.with_columns(
        pl.col(C.ITEM_ID).replace_strict(position, return_dtype=pl.Int64).alias("pos")
    )
    users = frame[C.USER_ID].unique(maintain_order=True).to_list()
    row_of = {u: i for i, u in enumerate(users)}
    train_frame = frame.filter(pl.col(C.SPLIT) == C.TRAIN)
    grouped = train_frame.group_by(C.USER_ID, maintain_order=True).agg(pl.col("pos"))
    train = [np.zeros(0, dtype=np.int64) for _ in users]
    for user, pos in zip(grouped[C.USER_ID].to_list(), grouped["pos"].to_list(), strict=True):
        train[row_of[user]] = np.asarray(pos, dtype=np.int64)

    def held_out(split: str) -> tuple[np.ndarray, np.ndarray]:
        part = frame.filter(pl.col(C.SPLIT) == split)
        rows = np.array([row_of[u] for u in part[C.USER_ID].to_list()], dtype=np.int64)
        return rows, part["pos"].to_numpy().astype(np.int64)

    valid_users, valid_targets = held_out(C.VALID)
    test_users, test_targets = held_out(C.TEST)
    return Histories(
        users=users,
        train=train,
        valid_users=valid_users,
        valid_targets=valid_targets,
        test_users=test_users,
        test_targets=test_targets,
        n_items=len(position),
        valid_target_of=dict(zip(valid_users.tolist(), valid_targets.tolist(), strict=True)),
    )


# ---------------------------------------------------------------- fine-tune


@dataclass(frozen=True)
class FineTuned:
    model_dir: Path
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
    """Train the sequential recommender on train events, keeping the best validation epoch."""
    from tailor.evaluate import evaluate_recommender, item_popularity
    from tailor.model import SeqRecommender

    hist = build_histories(prepared)
    text_vectors = np.load(vectors_path)
    popularity = item_popularity(np.concatenate(hist.train), hist.n_items)
    valid_history = hist.valid_history()

    def valid_ndcg(model: SeqRecommender) -> float:
        result = evaluate_recommender(
            model,
            valid_history,
            hist.valid_targets,
            valid_history,
            popularity,
            settings.eval.head_share,
            [10],
            len(hist.users),
        )
        return result.metrics["ndcg_at_10"]

    model = SeqRecommender(text_vectors, settings.train, seed=settings.seed)
    report = model.fit(
        hist.train,
        seed=settings.seed,
        valid_fn=valid_ndcg if len(hist.valid_users) else None,
        progress=progress,
    )
    model_dir = Path(out_dir) / "model"
    model.save(model_dir)
    return FineTuned(
        model_dir=model_dir,
        losses=report.losses,
        valid_scores=report.valid_scores,
        best_epoch=report.best_epoch,
        seconds=report.seconds,
    )


# ---------------------------------------------------------------- index


def build_item_index(
    model_dir: Path, vectors_path: Path, settings: Settings, out_dir: Path
) -> Path:
    from tailor.index import build_index, save_index
    from tailor.model import SeqRecommender

    model = SeqRecommender.load(model_dir, np.load(vectors_path), device="cpu")
    index = build_index(model.item_vectors(), settings.index, seed=settings.seed)
    return save_index(index, Path(out_dir) / "index.faiss")


# ---------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, dict[str, float]]  # model name -> {"valid_ndcg_at_10": ..., ...}
    table: Path  # markdown comparison table
    plot: Path  # long-tail curve with exposure overlaid
    sample: Path  # a sample of test-time recommendations, with labels
    primary: str  # the fine-tuned model's name in `metrics`


def evaluate_models(
    prepared: PreparedData,
    vectors_path: Path,
    model_dir: Path,
    settings: Settings,
    out_dir: Path,
) -> Evaluation:
    """The default protocol: the fine-tuned model and the baselines on valid and test events."""
    from tailor.baselines import MostPopular, TextCosine
    from tailor.evaluate import evaluate_recommender, exposure, item_popularity, metrics_table
    from tailor.model import SeqRecommender
    from tailor.plots import plot_long_tail

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hist = build_histories(prepared)
    text_vectors = np.load(vectors_path)
    popularity = item_popularity(np.concatenate(hist.train), hist.n_items)
    model = SeqRecommender.load(model_dir, text_vectors, device=settings.train.device)
    recommenders = [model, MostPopular(popularity), TextCosine(text_vectors)]
    ks = sorted(settings.eval.ks)
    n_train_users = len(hist.users)

    metrics: dict[str, dict[str, float]] = {}
    test_results = []
    for rec in recommenders:
        metrics[rec.name] = {}
        for split, history, targets in (
            ("valid", hist.valid_history(), hist.valid_targets),
            ("test", hist.test_history(), hist.test_targets),
        ):
            if len(targets) == 0:
                continue
            result = evaluate_recommender(
                rec,
                history,
                targets,
                history,
                popularity,
                settings.eval.head_share,
                ks,
                n_train_users,
            )
            metrics[rec.name].update({f"{split}_{k}": v for k, v in result.metrics.items()})
            if split == "test":
                test_results.append(result)

    table = out_dir / "evaluation.md"
    table.write_text(
        "Test split (temporal leave-one-out, full ranking, seen items excluded)\n\n"
        + metrics_table(test_results)
        + "\n"
    )
    plot = plot_long_tail(
        popularity,
        {r.name: exposure(r.top[:, : max(ks)], hist.n_items) for r in test_results},
        out_dir / "long_tail.png",
        head_share=settings.eval.head_share,
        title=f"Train popularity and exposure in test-time top-{max(ks)} lists",
    )
    sample = _write_sample(prepared, hist, test_results[0] if test_results else None, out_dir)
    return Evaluation(metrics, table, plot, sample, primary=model.name)


def _write_sample(prepared: PreparedData, hist: Histories, result, out_dir: Path) -> Path:
    items = pl.read_parquet(prepared.items, columns=[C.ITEM_ID, C.LABEL])
    labels = items[C.LABEL].to_list()
    rows = []
    if result is not None:
        for row, user_row in enumerate(hist.test_users[:25]):
            for rank, item in enumerate(result.top[row, :10], start=1):
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
    from tailor.model import SeqRecommender

    hist = build_histories(prepared)
    text_vectors = np.load(vectors_path)
    popularity = item_popularity(np.concatenate(hist.train), hist.n_items)
    model = SeqRecommender.load(model_dir, text_vectors, device="cpu")
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
