"""faiss inner-product index over item vectors, chosen by catalogue size, depth tuned to a recall.

- up to `exact_max_items`: exact (flat);
- up to `pq_min_items`: IVF (k-means lists, exact distances inside the visited lists);
- above: IVF-PQ with 4-bit fast-scan codes and an exact re-ranking of the shortlist (RFlat),
  so memory and time per query stay small while the final order uses the real scores;
- `index.factory` (a faiss index_factory string) overrides all of it.

How deep an approximate index searches (nprobe for IVF, efSearch for HNSW) decides its recall,
and the right depth depends on the vectors. `tune_search_depth` finds the smallest depth that
reaches `index.target_recall` against exact search on a sample of real queries, and leaves the
index set to it (faiss saves the depth with the index).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from tailor.settings import IndexSettings

log = logging.getLogger(__name__)


def choose_index_kind(n_items: int, settings: IndexSettings) -> str:
    if settings.factory:
        return "factory"
    if settings.kind != "auto":
        return settings.kind
    if n_items <= settings.exact_max_items:
        return "flat"
    return "ivf" if n_items < settings.pq_min_items else "ivfpq"


def _pq_factory(n: int, d: int, nlist: int) -> str:
    # 4-bit fast-scan PQ wants an even number of sub-quantizers dividing d; ~4 dims each.
    m = next((m for m in range(max(2, d // 4), 1, -1) if d % m == 0 and m % 2 == 0), None)
    if m is None:  # an odd width: the refinement step still scores exactly
        return f"IVF{nlist},SQ8,RFlat"
    return f"IVF{nlist},PQ{m}x4fs,RFlat"


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
    nlist = min(settings.ivf_nlist or max(1, int(4 * math.sqrt(n))), n)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.hnsw_ef_construction
        index.hnsw.efSearch = settings.hnsw_ef_search
    elif kind in ("ivf", "ivfpq", "factory"):
        if kind == "ivf":
            spec = f"IVF{nlist},Flat"
        elif kind == "ivfpq":
            spec = _pq_factory(n, d, nlist)
        else:
            spec = str(settings.factory)
        try:
            index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(f"index.factory {spec!r} is not a faiss index for d={d}: {e}") from e
        _seed_clustering(index, seed)
        sample = vectors
        # Centroids and codebooks learn from a seeded sample; k-means wants ~40 per centroid.
        size = max(settings.train_sample, 40 * nlist)
        if n > size:
            rows = np.random.default_rng(seed).choice(n, size, replace=False)
            sample = vectors[np.sort(rows)]
        index.train(sample)
        _set_depth(index, "nprobe", min(settings.ivf_nprobe, nlist))
        kind = f"{kind} ({spec})"
    else:  # pragma: no cover - pydantic restricts the values
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(vectors)
    log.info("built %s index over %d items of dimension %d", kind, n, d)
    return index


def _ivf_of(index):
    """The IVF layer inside a (possibly wrapped) index, or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _seed_clustering(index, seed: int) -> None:
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.cp.seed = seed  # k-means initialisation, for reproducible lists


def _set_depth(index, name: str, value: int) -> None:
    faiss.ParameterSpace().set_index_parameter(index, name, value)


def depth_parameter(index) -> str | None:
    """The knob that trades recall for time on this index: nprobe, efSearch, or None (exact)."""
    if _ivf_of(index) is not None:
        return "nprobe"
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexHNSW):
        return "efSearch"
    return None


def set_search_threads(threads: int) -> None:
    """OpenMP threads for faiss calls made from the calling thread.

    OpenMP keeps this count per thread: a thread that never sets it gets one per core. A server
    whose event loop searches with the default leaves an OpenMP team spinning after every
    search on the core its language model needs (new-query requests cost 7.4 ms of CPU each
    instead of 4.3 ms here), so each thread that serves searches calls this itself.
    """
    faiss.omp_set_num_threads(threads)


def search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, item positions) per query; missing neighbours are position -1."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    k = min(k, index.ntotal)
    return index.search(queries, k)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of `truth` (exact top-k) that `found` holds."""
    k = truth.shape[1]
    pairs = zip(found, truth, strict=True)
    hits = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in pairs]
    return float(np.mean(hits) / k) if len(hits) else 1.0


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return search_index(exact, queries, k)[1]


@dataclass(frozen=True)
class Depth:
    """What tuning chose and what it reached."""

    values: dict[str, int]  # nprobe / efSearch, and k_factor_rf for a re-ranked index; {} exact
    recall: float  # recall@k against exact search on the tuning queries
    k: int
    queries: int
    seconds: float


def _is_refined(index) -> bool:
    return isinstance(faiss.downcast_index(index), faiss.IndexRefine)


def tune_search_depth(
    index, vectors: np.ndarray, queries: np.ndarray, k: int, target: float
) -> Depth:
    """Set the smallest depth whose recall@k on `queries` reaches `target`, against exact
    search over `vectors`, and leave the index set to it; the deepest tried when none does
    (logged as a warning).

    A re-ranked index (RFlat) has a second knob, how long a shortlist is re-scored exactly
    (`k_factor_rf` x k): the list depth is found with a long shortlist first, then the
    shortlist is cut to the shortest that still reaches the target.
    """
    started = time.perf_counter()
    parameter = depth_parameter(index)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if parameter is None:
        return Depth({}, 1.0, k, len(queries), 0.0)
    truth = exact_top_k(vectors, queries, k)

    def recall() -> float:
        return recall_at_k(search_index(index, queries, k)[1], truth)

    refined = _is_refined(index)
    factors = [2, 4, 8, 16, 32, 64, 128, 256]
    if refined:
        _set_depth(index, "k_factor_rf", factors[-1])
    limit = _ivf_of(index).nlist if parameter == "nprobe" else 4096
    ladder = [v for v in _doubling(limit) if parameter == "nprobe" or v >= k]
    reached, value = 0.0, ladder[-1]
    for value in ladder:
        _set_depth(index, parameter, value)
        reached = recall()
        if reached >= target:
            break
    values = {parameter: value}
    if refined:
        for factor in factors:
            _set_depth(index, "k_factor_rf", factor)
            reached = recall()
            if reached >= target:
                break
        values["k_factor_rf"] = factor
    if reached < target:
        log.warning(
            "index recall@%d %.3f is below the target %.3f at %s", k, reached, target, values
        )
    seconds = time.perf_counter() - started
    log.info("tuned %s: recall@%d %.4f on %d queries", values, k, reached, len(queries))
    return Depth(values, reached, k, len(queries), seconds)


def _doubling(limit: int) -> list[int]:
    out, v = [], 1
    while v < limit:
        out.append(v)
        v *= 2
    return [*out, limit]


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


def build_tuned_index(model, histories, settings: IndexSettings, seed: int):
    """(index, depth) over a model's item vectors, as it is served: an approximate index gets
    its depth tuned on the vectors of up to `index.tune_queries` seeded users of `histories`
    (the queries it will answer); an exact one needs none. `model` has `item_vectors()` and
    `user_vectors(histories)`."""
    vectors = model.item_vectors()
    index = build_index(vectors, settings, seed=seed)
    depth = Depth({}, 1.0, settings.tune_k, 0, 0.0)
    if choose_index_kind(len(vectors), settings) != "flat" and len(histories):
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(histories), min(settings.tune_queries, len(histories)), replace=False)
        queries = model.user_vectors([histories[r] for r in np.sort(rows)])
        depth = tune_search_depth(index, vectors, queries, settings.tune_k, settings.target_recall)
    return index, depth
