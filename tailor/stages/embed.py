"""Item texts into vectors: optional encoder tuning, then the language model (with its cache)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.data.load import read_item_vectors
from tailor.models.encoder import EmbeddingCache, LazyEncoder, embed_texts, encoder_id, text_key
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


@dataclass(frozen=True)
class EmbedPlan:
    """The texts the cache lacks, cut into shards of `shard_texts` for parallel encoding."""

    texts: Path  # Parquet of one column, C.TEXT: every missing text once
    n_missing: int
    shard_texts: int

    @property
    def n_shards(self) -> int:
        return -(-self.n_missing // self.shard_texts)


def plan_embedding(items_path: Path, settings: Settings, work_dir: Path) -> EmbedPlan:
    """Which item texts still need the encoder (none when vectors come from a file)."""
    missing: list[str] = []
    if read_item_vectors(settings.data) is None:
        texts = pl.read_parquet(items_path, columns=[C.TEXT])[C.TEXT].to_list()
        cache = EmbeddingCache(settings.cache_dir / "embeddings", encoder_id(settings.embed))
        by_key = {text_key(t): t for t in texts}
        found = cache.get(list(by_key))
        missing = [t for k, t in by_key.items() if k not in found]
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "texts_to_embed.parquet"
    pl.DataFrame({C.TEXT: missing}, schema={C.TEXT: pl.Utf8}).write_parquet(path)
    plan = EmbedPlan(path, len(missing), settings.embed.shard_texts)
    log.info("%d item texts to embed, in %d shards", plan.n_missing, plan.n_shards)
    return plan


_ENCODERS: dict[str, LazyEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def embed_shard(plan: EmbedPlan, shard: int, settings: Settings) -> int:
    """Encode one shard of the plan into the embedding cache (its own cache file, so shards on
    several workers never collide); returns how many texts it encoded. The encoder is loaded
    once per process. A rerun encodes only what the cache still lacks."""
    start = shard * plan.shard_texts
    texts = pl.read_parquet(plan.texts)[C.TEXT].slice(start, plan.shard_texts).to_list()
    key = settings.embed.model_dump_json()
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.setdefault(key, LazyEncoder(settings.embed))
    cache = EmbeddingCache(settings.cache_dir / "embeddings", encoder.model_id)
    result = embed_texts(texts, encoder, cache, progress=False)
    log.info(
        "shard %d: embedded %d texts, %d already cached", shard, result.n_embedded, result.n_reused
    )
    return result.n_embedded


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


def load_text_vectors(
    vectors_path: Path, frozen_vectors_path: Path | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The item vectors a model read, and the pre-trained encoder's when they came from a
    tuned one (None when there are none or they are the same file)."""
    vectors = np.load(vectors_path)
    if frozen_vectors_path is None or Path(frozen_vectors_path) == Path(vectors_path):
        return vectors, None
    return vectors, np.load(frozen_vectors_path)
