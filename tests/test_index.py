"""Contract for the faiss index: every kind returns the exact neighbours on clustered data."""

from __future__ import annotations

import numpy as np
import pytest

from tailor.models.index import build_index, choose_index_kind, load_index, save_index, search_index
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


def test_auto_switches_to_hnsw_above_threshold():
    s = IndexSettings(exact_max_items=100)
    assert choose_index_kind(100, s) == "flat"
    assert choose_index_kind(101, s) == "hnsw"


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
