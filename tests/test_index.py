"""Contract for the faiss index: every kind returns the exact neighbours on clustered data."""

from __future__ import annotations

import numpy as np
import pytest

from tailor.models.index import (
    build_index,
    choose_index_kind,
    exact_top_k,
    load_index,
    recall_at_k,
    save_index,
    search_index,
    tune_search_depth,
)
from tailor.settings import IndexSettings


def clustered(rng, n=2000, d=32, clusters=40):
    centres = rng.normal(size=(clusters, d))
    points = centres[rng.integers(0, clusters, n)] + 0.1 * rng.normal(size=(n, d))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def exact_top(vectors, queries, k):
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_finds_the_exact_neighbours(kind, rng):
    vectors = clustered(rng)
    queries = vectors[:50] + 0.01 * rng.normal(size=(50, 32)).astype(np.float32)
    index = build_index(vectors, IndexSettings(kind=kind, ivf_nprobe=8), seed=0)
    _, found = search_index(index, queries, 10)
    truth = exact_top(vectors, queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= (1.0 if kind == "flat" else 0.9)


def test_auto_chooses_by_catalogue_size_and_a_factory_string_wins():
    s = IndexSettings(exact_max_items=100, pq_min_items=1000)
    assert choose_index_kind(100, s) == "flat"
    assert choose_index_kind(101, s) == "ivf"
    assert choose_index_kind(1000, s) == "ivfpq"
    assert choose_index_kind(10, s.model_copy(update={"factory": "IVF8,Flat"})) == "factory"
    with pytest.raises(ValueError, match="not a faiss index"):
        build_index(np.ones((10, 4), np.float32), IndexSettings(factory="Nonsense7"))


def noisy_clusters(rng, n, d=32, clusters=50, noise=0.5):
    centres = rng.normal(size=(clusters, d))
    points = centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, d))
    return points.astype(np.float32)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_search_depth_is_tuned_to_the_target_recall_and_saved(kind, rng, tmp_path):
    items, queries = noisy_clusters(rng, 20_000), noisy_clusters(rng, 400)
    index = build_index(items, IndexSettings(kind=kind, ivf_nlist=64, ivf_nprobe=1), seed=0)
    truth = exact_top_k(items, queries, 20)
    untuned = recall_at_k(search_index(index, queries, 20)[1], truth)
    depth = tune_search_depth(index, items, queries, 20, 0.95)
    assert depth.recall >= 0.95 and depth.values
    # Measured anew, and after a save and load: the depth travels with the index.
    assert recall_at_k(search_index(index, queries, 20)[1], truth) == pytest.approx(depth.recall)
    again = load_index(save_index(index, tmp_path / "i.faiss"))
    assert recall_at_k(search_index(again, queries, 20)[1], truth) == pytest.approx(depth.recall)
    if kind == "ivfpq":  # compressed codes alone are far off: the exact re-ranking is the fix
        assert untuned < 0.5 and depth.values["k_factor_rf"] > 1
    # The smallest depth that reaches it: one step shallower does not.
    name = "nprobe" if kind != "hnsw" else "efSearch"
    if depth.values[name] > (1 if name == "nprobe" else 32) and kind != "ivfpq":
        import faiss

        faiss.ParameterSpace().set_index_parameter(index, name, depth.values[name] // 2)
        assert recall_at_k(search_index(index, queries, 20)[1], truth) < 0.95


def test_an_exact_index_needs_no_tuning(rng):
    items = noisy_clusters(rng, 500)
    depth = tune_search_depth(build_index(items), items, items[:10], 5, 0.99)
    assert depth.values == {} and depth.recall == 1.0


def test_save_and_load_round_trip(tmp_path, rng):
    vectors = clustered(rng, n=100)
    index = build_index(vectors)
    path = save_index(index, tmp_path / "sub" / "index.faiss")
    again = load_index(path)
    np.testing.assert_array_equal(
        search_index(index, vectors[:5], 3)[1], search_index(again, vectors[:5], 3)[1]
    )


def test_bad_vectors_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        build_index(np.array([[np.nan, 1.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        build_index(np.zeros((0, 4), dtype=np.float32))
