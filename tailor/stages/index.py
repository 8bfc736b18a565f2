"""The faiss index over a trained model's item vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tailor.models.index import build_index as build_faiss_index
from tailor.models.index import save_index
from tailor.models.sequential import load_recommender
from tailor.settings import IndexSettings


def build_index(
    model_dir: Path, vectors_path: Path, index: IndexSettings, seed: int, out_dir: Path
) -> Path:
    """index.faiss in `out_dir` over the item vectors of the model in `model_dir`."""
    model = load_recommender(model_dir, np.load(vectors_path), device="cpu")
    built = build_faiss_index(model.item_vectors(), index, seed=seed)
    return save_index(built, Path(out_dir) / "index.faiss")
