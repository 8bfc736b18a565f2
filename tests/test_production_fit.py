"""The version that is served learned from every event; the gate compares like with like."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient

from flows.train import train
from tailor import columns as C
from tailor.data.sources import generate_synthetic
from tailor.models.bundle import Lineage
from tailor.models.sequential import load_recommender
from tailor.settings import SyntheticSettings
from tailor.stages.data import all_histories, prepare_data
from tailor.tracking.registry import load_bundle, promote
from tests.conftest import tiny_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _client(settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _members(model):
    return getattr(model, "members", [model])


def test_the_served_version_learned_from_every_event(settings):
    result = train(settings=settings)
    client = _client(settings)
    name = settings.tracking.model_name
    version = client.get_model_version(name, result.model_version)
    # Lineage: the version comes from the production fit's run, a child of the training run.
    assert version.run_id == result.production_run_id
    lineage = Lineage.from_tags(version.tags)
    assert lineage.evaluation_run_id == result.run_id
    assert lineage.production_run_id == result.production_run_id
    production = client.get_run(result.production_run_id)
    assert production.data.tags["mlflow.parentRunId"] == result.run_id
    assert production.data.params["data_fingerprint"] == lineage.data_fingerprint
    # Every reported metric is the evaluation fit's, on the run and on the version alike.
    ours = result.metrics["tailor-seq"]["test_ndcg_at_10"]
    assert client.get_run(result.run_id).data.metrics["test_ndcg_at_10"] == ours
    assert lineage.metrics["test_ndcg_at_10"] == ours
    assert not any(k.startswith("test_") for k in production.data.metrics)

    # The items held out for the cold-item measurement: unknown to the evaluation fit, learned
    # (a trained id embedding) by the served model.
    out = result.out_dir
    items = pl.read_parquet(out / "data" / "items.parquet")[C.ITEM_ID].to_list()
    cold = pl.read_parquet(out / "data" / "cold_events.parquet")
    cold_items = sorted(set(cold.filter(pl.col(C.POSITIVE))[C.ITEM_ID].to_list()))
    assert cold_items
    served = load_bundle(settings.tracking_uri, name, result.model_version)
    vectors = served.text_vectors
    evaluated = load_recommender(out / "evaluation_fit" / "model", vectors, device="cpu")
    for item in cold_items:
        pos = items.index(item)
        for member in _members(served.model):
            assert bool(member.net.trained[pos])
            assert float(member.net.item_id.weight[pos].detach().norm()) > 0
        for member in _members(evaluated):
            assert not bool(member.net.trained[pos])
            assert float(member.net.item_id.weight[pos].detach().norm()) == 0
    # Each user's latest events (the evaluation's test targets) are in the production data.
    prepared = prepare_data(settings, out / "recheck")
    users, histories, _ = all_histories(prepared)
    learned = {u: {items[p] for p in h} for u, h in zip(users, histories, strict=True)}
    events = pl.read_parquet(out / "data" / "interactions.parquet")
    tests = events.filter(pl.col(C.SPLIT) == C.TEST).select(C.USER_ID, C.ITEM_ID).rows()
    assert tests and all(item in learned[user] for user, item in tests)
    assert production.data.metrics["n_events"] == prepared.n_interactions


def _write_files(root: Path, keep) -> tuple[Path, Path]:
    """Synthetic data as user files, events filtered by `keep(timestamp)`."""
    raw = generate_synthetic(
        SyntheticSettings(n_users=80, n_items=80, n_topics=4, events_per_user=14), seed=3
    )
    stamps = raw.interactions[C.TIMESTAMP].cast(pl.Int64)
    root.mkdir(parents=True, exist_ok=True)
    events = root / "events.parquet"
    raw.interactions.filter(keep(stamps)).write_parquet(events)
    items = root / "items.parquet"
    raw.items.write_parquet(items)
    return events, items


def _file_settings(workdir: Path, events: Path, items: Path):
    return tiny_settings(
        workdir,
        data={
            "source": "files",
            "interactions_path": str(events),
            "items_path": str(items),
            "text_template": "{title}. {description}",
        },
        eval={"gate_min_cases": 5},
    )


def test_the_gate_scores_both_models_on_events_after_the_champions_data(workdir, tmp_path):
    raw = generate_synthetic(
        SyntheticSettings(n_users=80, n_items=80, n_topics=4, events_per_user=14), seed=3
    )
    cutoff = int(np.median(raw.interactions[C.TIMESTAMP].cast(pl.Int64).to_numpy()))
    client = _client(tiny_settings(workdir))

    # Yesterday: events up to the cut-off. Today: everything, so many test events are later
    # than anything the champion learned from.
    first = train(
        settings=_file_settings(workdir, *_write_files(tmp_path / "a", lambda t: t <= cutoff))
    )
    today = _file_settings(workdir, *_write_files(tmp_path / "b", lambda t: t > -1))
    second = train(settings=today)
    run = client.get_run(second.run_id)
    assert first.promoted
    assert run.data.tags["gate.basis"] == "new data"
    assert run.data.metrics["gate.n_cases"] >= 5
    assert "later than the champion's data" in second.gate_reason
    assert "champion.test_ndcg_at_10" in run.data.metrics
    assert "gate.candidate.test_ndcg_at_10" in run.data.metrics

    # The data changed but not forward in time (the earliest event dropped): no case is later
    # than the champion's data, so nothing fair to compare on and the version is kept out.
    name = today.tracking.model_name
    if not second.promoted:
        promote(client, name, "champion", second.model_version)
    earliest = int(raw.interactions[C.TIMESTAMP].cast(pl.Int64).min())
    changed = _file_settings(workdir, *_write_files(tmp_path / "c", lambda t: t > earliest))
    third = train(settings=changed)
    assert not third.promoted and "like-for-like" in third.gate_reason
    assert client.get_run(third.run_id).data.tags["gate.basis"] == "none"
    assert str(client.get_model_version_by_alias(name, "champion").version) == second.model_version
