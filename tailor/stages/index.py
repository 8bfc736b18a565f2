"""The faiss index over a trained model's item vectors, its search depth tuned to a recall."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tailor.models.index import Depth, build_tuned_index, choose_index_kind, save_index
from tailor.models.sequential import load_recommender
from tailor.settings import IndexSettings
from tailor.stages.data import PreparedData, all_histories
from tailor.tracking.record import Record


@dataclass(frozen=True)
class BuiltIndex:
    path: Path  # index.faiss, the tuned depth saved in it
    kind: str
    n_items: int
    depth: Depth

    def record(self) -> Record:
        metrics: dict[str, float] = {f"index.recall_at_{self.depth.k}": self.depth.recall}
        metrics.update({f"index.{name}": float(v) for name, v in self.depth.values.items()})
        return Record(metrics=metrics, tags={"index.kind": self.kind})


def build_index(
    model_dir: Path,
    vectors_path: Path,
    index: IndexSettings,
    seed: int,
    out_dir: Path,
    prepared: PreparedData | None = None,
) -> BuiltIndex:
    """index.faiss in `out_dir` over the item vectors of the model in `model_dir`.

    An approximate index's depth is tuned to `index.target_recall` against exact search, on
    the vectors of up to `index.tune_queries` seeded users of `prepared` (the queries it will
    answer); an exact index needs none.
    """
    model = load_recommender(model_dir, np.load(vectors_path), device="cpu")
    kind = choose_index_kind(model.n_items, index)
    # Only an approximate index is tuned, so only then are the users' histories read.
    histories = all_histories(prepared)[1] if prepared is not None and kind != "flat" else []
    built, depth = build_tuned_index(model, histories, index, seed)
    path = save_index(built, Path(out_dir) / "index.faiss")
    return BuiltIndex(path=path, kind=kind, n_items=model.n_items, depth=depth)
