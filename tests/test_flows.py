"""The flows end to end on real Prefect, real MLflow (SQLite), real faiss and the real encoder."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from mlflow import MlflowClient

from flows.pipeline import train_and_refresh
from flows.refresh import nightly_refresh
from flows.train import train
from tailor.data.sources import DataError
from tailor.serving.store import RecommendationStore, StoreError
from tests.conftest import tiny_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _client(settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def test_train_and_refresh_end_to_end(settings):
    result = train_and_refresh(settings=settings)
    client = _client(settings)

    run = client.get_run(result.train.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.tags["prefect.flow_run_id"]
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == [1, 2]
    for key in ("test_ndcg_at_10", "test_recall_at_20", "test_aplt_at_20", "valid_ndcg_at_10"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    assert "most-popular.test_ndcg_at_10" in run.data.metrics
    assert "text-cosine.test_ndcg_at_10" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/long_tail.png", "evaluation/evaluation.md"} <= artifacts
    assert "evaluation/cold_start.md" in artifacts
    # Held-out items inserted through the service path score as they do from the bundle.
    live = result.train.live
    assert live["inserted_cold_recall_at_20"] == live["bundle_cold_recall_at_20"]
    assert run.data.metrics["live.inserted_cold_recall_at_20"] == live["inserted_cold_recall_at_20"]
    assert any(
        a.path.endswith("cleaning_report.json")
        for a in client.list_artifacts(run.info.run_id, "cleaning")
    )

    champion = client.get_model_version_by_alias(settings.tracking.model_name, "champion")
    assert str(champion.version) == result.train.model_version == "1"
    assert result.train.promoted

    store = RecommendationStore(settings.store_url)
    try:
        users = store.users()
        assert len(users) == settings.data.synthetic.n_users
        recs = store.read(users[0])
    finally:
        store.dispose()
    assert recs.height == settings.refresh.k
    assert recs["rank"].to_list() == list(range(1, settings.refresh.k + 1))
    assert (recs["model_version"] == "1").all()
    assert all(reason.startswith("because you liked") for reason in recs["reason"].to_list())
    refresh_run = client.get_run(result.refresh.run_id)
    assert refresh_run.data.tags["model_version"] == "1"
    assert refresh_run.data.metrics["published_users"] == settings.data.synthetic.n_users

    # What the live service logged reaches the next nightly refresh: a new item is embedded and
    # scored (the model never saw it), and a live view makes that item "seen" for its user.
    from datetime import UTC, datetime

    from tailor.data.livelog import LiveEvent, LiveItem, LiveLog

    top = recs["item_id"][0]
    log = LiveLog(settings.live_url)
    log.upsert_items([LiveItem("live-item", "A brand new item about topic 1", "Live Item")])
    log.append_events([LiveEvent(users[0], top, "view", 1.0, datetime.now(UTC))])
    log.dispose()
    again = nightly_refresh(settings=settings)
    metrics = client.get_run(again.run_id).data.metrics
    assert metrics["published_items_added"] == 1
    store = RecommendationStore(settings.store_url)
    try:
        assert top not in store.read(users[0])["item_id"].to_list()
    finally:
        store.dispose()


def test_second_run_embeds_nothing_and_both_runs_are_comparable(settings):
    first = train(settings=settings)
    second = train(settings=settings)
    assert first.n_embedded > 0
    assert second.n_embedded == 0
    assert second.n_reused == first.n_embedded + first.n_reused
    # Same seed, same data: the same metrics.
    assert first.metrics == second.metrics
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`tailor.flow` = 'train'")
    assert {r.info.run_id for r in runs} == {first.run_id, second.run_id}
    # Every baseline is a child run of its training run, for side-by-side comparison.
    children = client.search_runs(
        [experiment.experiment_id],
        f"tags.mlflow.parentRunId = '{first.run_id}' and tags.`tailor.flow` = 'baseline'",
    )
    assert {r.data.tags["tailor.model"] for r in children} == set(settings.eval.baselines)
    ease = next(r for r in children if r.data.tags["tailor.model"] == "ease")
    assert "ease.l2" in ease.data.params and "test_ndcg_at_10" in ease.data.metrics
    trials = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{ease.info.run_id}'"
    )
    assert len(trials) == 5  # the EASE grid, one child run per trial
    # Same data, same protocol: the gate compares the two evaluation fits on the exam they
    # both sat, using the metric recorded on the champion's version.
    second_run = client.get_run(second.run_id)
    assert second_run.data.tags["gate.basis"] == "same exam"
    recorded = second_run.data.metrics["champion.test_ndcg_at_10"]
    assert recorded == pytest.approx(first.metrics["tailor-seq"]["test_ndcg_at_10"])
    assert "the same exam" in second.gate_reason
    assert second.model_version == "2" and second.promoted  # equal is not worse


def test_task_failing_twice_is_retried_and_run_completes(settings, monkeypatch):
    import tasks.train

    real = tasks.train.stage.train_recommender
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("injected transient failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.train.stage, "train_recommender", flaky)
    result = train(settings=settings)
    assert calls["n"] == 3
    assert _client(settings).get_run(result.run_id).info.status == "FINISHED"


def test_refresh_failing_half_way_keeps_previous_recommendations(workdir, monkeypatch):
    settings = tiny_settings(workdir, refresh={"k": 5, "chunk_rows": 40})
    train_and_refresh(settings=settings)
    store = RecommendationStore(settings.store_url)
    before = store.current()
    users = store.users()
    lists_before = {u: store.read(u) for u in users}

    real_insert = RecommendationStore._insert_chunk
    calls = {"n": 0}

    def fail_after_first_chunk(self, conn, chunk):
        calls["n"] += 1
        if calls["n"] % 2 == 0:  # every attempt writes one chunk, then dies
            raise StoreError("injected failure half-way through the write")
        return real_insert(self, conn, chunk)

    monkeypatch.setattr(RecommendationStore, "_insert_chunk", fail_after_first_chunk)
    with pytest.raises(StoreError, match="injected"):
        nightly_refresh(settings=settings)
    assert calls["n"] == 8  # first attempt + 3 retries, each two chunks in

    assert store.current().batch_id == before.batch_id
    for user in users:
        assert store.read(user).equals(lists_before[user])
    store.dispose()


def test_missing_column_stops_the_run_with_a_named_error(workdir):
    events = workdir / "events.csv"
    pl.DataFrame({"user": ["u1"], "item": ["i1"]}).write_csv(events)
    items = workdir / "items.csv"
    pl.DataFrame({"item": ["i1"], "title": ["A film"]}).write_csv(items)
    settings = tiny_settings(
        workdir,
        data={
            "source": "files",
            "interactions_path": events,
            "items_path": items,
            "columns": {"user_id": "user", "item_id": "item", "timestamp": "ts"},
            "text_template": "{title}",
        },
    )
    with pytest.raises(DataError) as err:
        train(settings=settings)
    message = str(err.value)
    assert str(events) in message and "'ts'" in message and "data.columns.timestamp" in message


def test_quarantined_rows_are_counted_and_logged(workdir):
    from tailor.data.sources import generate_synthetic

    raw = generate_synthetic(tiny_settings(workdir).data.synthetic, seed=1)
    bad = pl.DataFrame(
        {
            "user_id": ["u0001", "u0001", "", "u0002"],
            "item_id": [
                "no-such-item",
                raw.items["item_id"][0],
                raw.items["item_id"][1],
                raw.items["item_id"][2],
            ],
            "timestamp": ["100", "not a time", "100", "100"],
            "weight": ["1", "1", "1", "1"],
        }
    )
    events = workdir / "events.parquet"
    pl.concat([raw.interactions.select(bad.columns), bad]).write_parquet(events)
    items = workdir / "items.csv"
    raw.items.write_csv(items)
    settings = tiny_settings(
        workdir,
        data={
            "source": "files",
            "interactions_path": events,
            "items_path": items,
            "columns": {"weight": "weight"},
            "text_template": "{title}. {description}",
            "label_template": "{title}",
        },
    )
    result = train(settings=settings)
    metrics = _client(settings).get_run(result.run_id).data.metrics
    assert metrics["quarantined.interactions.unknown_item"] == 1
    assert metrics["quarantined.interactions.unparseable_timestamp"] == 1
    assert metrics["quarantined.interactions.missing_user_id"] == 1
    quarantine = pl.read_parquet(result.out_dir / "data" / "quarantine.parquet")
    assert quarantine.height == 3
    assert "no-such-item" in " ".join(quarantine["row"].to_list())
    # What MLflow holds: the same rows and reasons, user ids pseudonymised (keyed hash).
    import mlflow

    logged = mlflow.artifacts.download_artifacts(
        run_id=result.run_id,
        artifact_path="cleaning/quarantine.parquet",
        dst_path=str(workdir / "dl"),
        tracking_uri=settings.tracking_uri,
    )
    public = pl.read_parquet(logged)
    assert public["reason"].to_list() == quarantine["reason"].to_list()
    text = " ".join(public["row"].to_list())
    assert "u0001" not in text and "u0002" not in text and '"user_id": "p_' in text
    assert "no-such-item" in text  # items are not personal


def test_item_vectors_from_a_file_replace_the_encoder(workdir, rng):
    from tailor.data.sources import generate_synthetic

    base = tiny_settings(workdir)
    raw = generate_synthetic(base.data.synthetic, seed=base.seed)
    vectors = workdir / "vectors.parquet"
    given = rng.normal(size=(raw.items.height, 12))
    pl.DataFrame({"item_id": raw.items["item_id"], "vector": given.tolist()}).write_parquet(vectors)
    interactions, items = workdir / "events.parquet", workdir / "items.parquet"
    raw.interactions.write_parquet(interactions)
    raw.items.write_parquet(items)
    settings = tiny_settings(
        workdir,
        data={
            "source": "files",
            "interactions_path": interactions,
            "items_path": items,
            "item_vectors_path": vectors,
            "label_template": "{title}",
        },
    )
    result = train(settings=settings)
    assert result.n_embedded == 0
    # The model read the file's vectors (normalised), row for row: no encoder was involved.
    import numpy as np

    bundle = result.out_dir / "production" / "bundle"
    order = pl.read_parquet(bundle / "items.parquet")["item_id"].to_list()
    row = {item: i for i, item in enumerate(raw.items["item_id"].to_list())}
    expected = given[[row[i] for i in order]]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(bundle / "text_vectors.npy"), expected, atol=1e-6)
    assert 0.0 <= result.metrics["tailor-seq"]["test_ndcg_at_10"] <= 1.0


def test_search_flow_makes_one_child_run_per_trial_and_picks_the_best(workdir):
    from flows.search import search
    from tailor.stages.search import OBJECTIVE

    settings = tiny_settings(
        workdir, search={"learning_rate": [1e-3, 5e-3], "text_view_weight": [0.0, 0.3]}
    )
    result = search(settings=settings)
    assert len(result.trials) == 4
    best = max(result.trials, key=lambda t: t[OBJECTIVE])
    assert result.best_score == best[OBJECTIVE]
    assert result.best_params == {
        k: best[k] for k in ("learning_rate", "text_view_weight", "dropout", "max_len")
    }
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert len(children) == 4
    logged = sorted(c.data.metrics[OBJECTIVE] for c in children)
    assert logged == sorted(t[OBJECTIVE] for t in result.trials)
    assert {c.data.params["train.learning_rate"] for c in children} == {"0.001", "0.005"}
    assert "best" in result.table.read_text()


def test_train_with_a_tuned_encoder_reports_both_text_baselines(workdir):
    settings = tiny_settings(
        workdir, embed={"tuning": {"enabled": True, "epochs": 1}}, train={"text_view_weight": 0.3}
    )
    result = train(settings=settings)
    assert {"text-cosine", "text-cosine-tuned"} <= set(result.metrics)
    tuned = list((settings.cache_dir / "encoders").iterdir())
    assert len(tuned) == 1 and (tuned[0] / "config.json").is_file()
    # The tuned encoder read the texts, so its vectors differ from the pre-trained ones.
    assert result.metrics["text-cosine"] != result.metrics["text-cosine-tuned"]
    assert result.promoted


def test_an_approximate_index_is_tuned_to_its_recall_and_logged(workdir):
    settings = tiny_settings(
        workdir, index={"exact_max_items": 10, "target_recall": 0.9, "tune_k": 20}
    )
    result = train(settings=settings)
    run = _client(settings).get_run(result.run_id)
    assert run.data.tags["index.kind"].startswith("ivf")
    assert run.data.metrics["index.recall_at_20"] >= 0.9
    assert run.data.metrics["index.nprobe"] >= 1
    # The metrics of the run were computed through an index tuned the same way.
    assert 0.0 < result.metrics["tailor-seq"]["test_recall_at_20"] <= 1.0


def test_fits_beside_the_evaluation_give_the_same_models(tmp_path):
    # One torch thread everywhere: the children's fits are then the in-process fits, bit for
    # bit (the baselines beside the evaluation fit, the production fit beside the evaluation).
    runs = {}
    for beside in (False, True):
        settings = tiny_settings(
            tmp_path / str(beside),
            eval={"baselines_beside": beside},
            train={"production_beside": beside},
        )
        runs[beside] = train(settings=settings)
    before, beside = runs[False], runs[True]
    assert {"sasrec", "als", "ease"} <= set(beside.metrics)
    assert beside.metrics == before.metrics
    assert beside.significance == before.significance
    fitted = beside.out_dir / "baselines"
    assert (fitted / "baselines.json").is_file() and (fitted / "sasrec" / "model").is_dir()
    assert not (before.out_dir / "baselines").exists()
    # The registered production fit: the same weights, and its child's answer left beside it.
    assert (beside.out_dir / "production" / "production.json").is_file()
    assert not (before.out_dir / "production" / "production.json").exists()
    weights = {
        key: sorted((run.out_dir / "production" / "model").rglob("model.pt"))
        for key, run in runs.items()
    }
    assert len(weights[True]) == len(weights[False]) >= 1
    for mine, theirs in zip(weights[True], weights[False], strict=True):
        a = torch.load(mine, weights_only=True)
        b = torch.load(theirs, weights_only=True)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert beside.production_seconds > 0
