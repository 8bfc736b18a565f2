"""Item texts into vectors: optional encoder tuning, then the language model (with its cache)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.data.load import read_item_vectors
from tailor.models.encoder import EmbeddingCache, LazyEncoder, embed_texts
from tailor.models.encoder_tuning import tune_encoder_weights
from tailor.settings import Settings
from tailor.stages.data import PreparedData, load_histories
from tailor.tracking.record import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedItems:
    vectors: Path  # (n_items, d) float32 .npy, rows in the items file's order
    n_embedded: int
    n_reused: int
    model_id: str

    def record(self) -> Record:
        return Record(metrics={"items_embedded": self.n_embedded, "items_reused": self.n_reused})


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


def tune_encoder(prepared: PreparedData, settings: Settings, progress: bool = True) -> Settings:
    """Settings naming the encoder the embed stage should use: the configured one, or with
    `embed.tuning.enabled` a copy tuned on this run's training events.

    The tuned copy is cached under the workdir by content (base encoder, tuning settings,
    seed, item texts, training histories), so a rerun on the same data reuses it.
    """
    embed = settings.embed
    if not embed.tuning.enabled:
        return settings
    hist = load_histories(prepared)
    texts = pl.read_parquet(prepared.items, columns=[C.TEXT])[C.TEXT].to_list()
    digest = hashlib.sha256()
    digest.update(embed.model_dump_json(include={"model", "max_length"}).encode())
    digest.update(embed.tuning.model_dump_json().encode())
    digest.update(str(settings.seed).encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    positives = hist.train_positives()
    for history in positives:
        digest.update(np.asarray(history, dtype=np.int64).tobytes() + b"|")
    folder = settings.cache_dir / "encoders" / digest.hexdigest()[:32]
    if (folder / "config.json").is_file():
        log.info("reusing the tuned encoder in %s", folder)
    else:
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        report = tune_encoder_weights(
            texts, positives, embed, embed.tuning, partial, settings.seed, progress=progress
        )
        log.info("tuned the encoder in %.0f s, loss per epoch %s", report.seconds, report.losses)
        # Renamed into place only when complete: a crash never leaves a half-saved encoder.
        os.replace(partial, folder)
    return settings.model_copy(update={"embed": embed.model_copy(update={"model": str(folder)})})


def embed_items(items_path: Path, settings: Settings, progress: bool = True) -> EmbeddedItems:
    """Vectors for every item: the language model (with its cache), or the user's own file."""
    key = item_texts_key(items_path, settings)
    out = settings.cache_dir / "item_vectors" / f"{key}.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    items = pl.read_parquet(items_path)

    user_vectors = read_item_vectors(settings.data)
    if user_vectors is not None:
        aligned = items.select(C.ITEM_ID).join(user_vectors, on=C.ITEM_ID, how="left")
        matrix = np.asarray(aligned[C.VECTOR].to_list(), dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.clip(norms, 1e-12, None)
        save_npy(out, matrix)
        return EmbeddedItems(out, 0, 0, f"file:{settings.data.item_vectors_path}")

    encoder = LazyEncoder(settings.embed)
    cache = EmbeddingCache(settings.cache_dir / "embeddings", encoder.model_id)
    result = embed_texts(items[C.TEXT].to_list(), encoder, cache, progress=progress)
    save_npy(out, result.vectors)
    return EmbeddedItems(out, result.n_embedded, result.n_reused, encoder.model_id)


def save_npy(path: Path, array: np.ndarray) -> None:
    """Written aside and renamed: a reader never sees half an array."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)
