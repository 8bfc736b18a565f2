"""Package a trained model as a bundle, score the current champion, register behind the gate."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tailor.evaluation.champion import score_bundle
from tailor.evaluation.compare import Exam
from tailor.models.bundle import Bundle, write_bundle
from tailor.models.index import load_index
from tailor.models.sequential import load_recommender
from tailor.ranking.tail import item_popularity
from tailor.settings import Settings
from tailor.stages.data import PreparedData, load_histories
from tailor.tracking.record import Record
from tailor.tracking.registry import GateDecision, champion, load_bundle, register_bundle
from tailor.tracking.runs import client_for

log = logging.getLogger(__name__)


def bundle_model(
    prepared: PreparedData,
    vectors_path: Path,
    model_dir: Path,
    index_path: Path,
    settings: Settings,
    out_dir: Path,
) -> Path:
    """Everything serving needs in one folder (its settings name the encoder to use)."""
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


@dataclass(frozen=True)
class ChampionScore:
    """The current champion measured on a new run's test cases."""

    version: str
    metrics: dict[str, float]

    def record(self) -> Record:
        return Record(metrics={f"champion.{k}": v for k, v in self.metrics.items()})


def score_champion(prepared: PreparedData, settings: Settings) -> ChampionScore | None:
    """The champion's metrics on this run's test cases, or None when there is no champion."""
    client = client_for(settings.tracking_uri)
    t = settings.tracking
    current = champion(client, t.model_name, t.champion_alias)
    if current is None:
        return None
    version = str(current.version)
    bundle: Bundle = load_bundle(settings.tracking_uri, t.model_name, version)
    hist = load_histories(prepared)
    item_ids = pl.read_parquet(prepared.items, columns=["item_id"])["item_id"].to_list()
    metrics = score_bundle(bundle, Exam(hist, settings.eval), item_ids, settings.rerank)
    return ChampionScore(version=version, metrics=metrics)


def register_model(
    bundle: Path,
    settings: Settings,
    run_id: str,
    gate_value: float,
    champion_score: ChampionScore | None = None,
) -> GateDecision:
    """Log the bundle as a registered model version; move `champion` if it passes the gate."""
    t = settings.tracking
    return register_bundle(
        client_for(settings.tracking_uri),
        run_id,
        bundle,
        t.model_name,
        t.champion_alias,
        settings.eval.gate_metric,
        gate_value,
        champion_score=None
        if champion_score is None
        else (
            champion_score.version,
            champion_score.metrics.get(settings.eval.gate_metric, float("nan")),
        ),
    )
