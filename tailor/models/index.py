"""faiss inner-product index over item vectors: exact for small catalogues, HNSW or IVF above."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import faiss
import numpy as np

from tailor.settings import IndexSettings

log = logging.getLogger(__name__)


def choose_index_kind(n_items: int, settings: IndexSettings) -> str:
    if settings.kind != "auto":
        return settings.kind
    return "flat" if n_items <= settings.exact_max_items else "hnsw"


def build_index(vectors: np.ndarray, settings: IndexSettings | None = None, seed: int = 0):
    """Index rows of `vectors` by their position; scores are inner products."""
    settings = settings or IndexSettings()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(
            f"need a non-empty (n, d) matrix of item vectors, got shape {vectors.shape}"
        )
    if not np.isfinite(vectors).all():
        raise ValueError("item vectors contain NaN or infinity")
    n, d = vectors.shape
    kind = choose_index_kind(n, settings)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.hnsw_ef_construction
        index.hnsw.efSearch = settings.hnsw_ef_search
    elif kind == "ivf":
        nlist = settings.ivf_nlist or max(1, int(4 * math.sqrt(n)))
        nlist = min(nlist, n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed  # k-means initialisation, for reproducible lists
        index.train(vectors)
        index.nprobe = min(settings.ivf_nprobe, nlist)
    else:  # pragma: no cover - pydantic restricts the values
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(vectors)
    log.info("built %s index over %d items of dimension %d", kind, n, d)
    return index


def search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, item positions) per query; missing neighbours are position -1."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    k = min(k, index.ntotal)
    return index.search(queries, k)


def save_index(index, path: Path) -> Path:
    """Write to a temporary name and rename, so a reader never opens a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
    return path


def load_index(path: Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"faiss index {path} does not exist")
    return faiss.read_index(str(path))
