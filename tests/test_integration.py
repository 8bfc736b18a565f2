"""The integration tier (`make test-integration`, marker `integration`): real servers started by
deployments/stack.py (PostgreSQL, an S3 endpoint, an MLflow server on both, a Prefect server on
PostgreSQL, a process worker), the deployments of deployments/prefect.yaml run through the
worker, the refresh's blocks on a local Dask cluster of two workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from deployments.stack import BUCKET, Stack, free_port, run_deployment
from tailor import columns as C
from tests.conftest import CHILD_RUN, wait_ready, write_toml

pytestmark = pytest.mark.integration

N_USERS = 600
N_BLOCKS = 4


def _config(path: Path, workdir: Path, k: int) -> Path:
    return write_toml(
        path,
        {
            "workdir": str(workdir),
            **CHILD_RUN,
            "embed": {"shard_texts": 30},  # 80 item texts: 3 shards on the Dask workers
            # An approximate index tuned to full recall: its lists must equal exact search's.
            "index": {"kind": "ivf", "target_recall": 1.0},
            "refresh": {"k": k, "block_users": N_USERS // N_BLOCKS},
            "runner": {"kind": "dask", "workers": 2},
            "serve": {"poll_seconds": 0},
        },
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    with Stack(root) as up:
        yield up


@pytest.fixture(scope="module")
def trained(stack):
    """`train` then `nightly-refresh`, both deployed and run through the worker."""
    work = stack.root / "work"
    config = _config(stack.root / "tailor.toml", work, k=20)
    train = run_deployment(stack, "train/train", {"config": str(config)}, timeout=600)
    refresh = run_deployment(
        stack, "nightly-refresh/nightly-refresh", {"config": str(config)}, timeout=600
    )
    return config, train, refresh


@contextlib.contextmanager
def _client_env(stack):
    """This process as a client of the stack (MLflow and S3 read their settings from it)."""
    saved = dict(os.environ)
    os.environ.update(stack.env())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _settings(config: Path, stack):
    from tailor.settings import load_settings

    with _client_env(stack):
        return load_settings(config)


def test_train_and_refresh_complete_through_the_worker(stack, trained):
    _, train, refresh = trained
    assert train["state"] == "COMPLETED", train
    assert refresh["state"] == "COMPLETED", refresh


def test_metrics_are_in_the_mlflow_server_and_artifacts_in_the_bucket(stack, trained):
    import boto3
    from mlflow import MlflowClient

    config, _, _ = trained
    settings = _settings(config, stack)
    client = MlflowClient(stack.mlflow_url)
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`tailor.flow` = 'train'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert 0 < runs[0].data.metrics["test_ndcg_at_10"] <= 1
    assert runs[0].data.metrics["items_embedded"] == 80  # by the shards on the Dask workers
    assert runs[0].info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server
    version = client.get_registered_model(settings.tracking.model_name).latest_versions[0]
    assert version.version == "1"

    with _client_env(stack):
        s3 = boto3.client("s3", endpoint_url=stack.s3_url)
        keys = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])
        ]
    run_id = runs[0].info.run_id
    assert any(k.startswith("mlflow/") and run_id in k and "evaluation" in k for k in keys)
    assert any(k.endswith("bundle/checksums.json") for k in keys)  # the registered bundle
    refresh_runs = client.search_runs(
        [client.get_experiment_by_name(settings.tracking.refresh_experiment).experiment_id]
    )
    assert refresh_runs[0].data.metrics["published_blocks"] == N_BLOCKS


def test_recommendations_are_in_postgresql(stack, trained):
    from tailor.serving.store import RecommendationStore

    store = RecommendationStore(stack.pg_url("tailor"))
    try:
        current = store.current()
        assert current.n_users == N_USERS and current.n_rows == N_USERS * 20
        assert len(store.users()) == N_USERS
        assert store.read(store.users()[0])[C.RANK].to_list() == list(range(1, 21))
    finally:
        store.dispose()


@pytest.mark.usefixtures("trained")
def test_blocks_and_embedding_shards_ran_as_tasks_on_a_dask_cluster_of_two_workers(stack):
    import httpx

    def states(prefix: str) -> Counter:
        runs = httpx.post(
            f"{stack.prefect_api}/task_runs/filter",
            json={"task_runs": {"name": {"like_": prefix}}, "limit": 200},
            timeout=30,
        ).json()
        return Counter(r["state_type"] for r in runs)

    assert states("score-block-") == Counter({"COMPLETED": N_BLOCKS})
    assert states("embed-shard-") == Counter({"COMPLETED": 3})
    log = (stack.root / "logs" / "worker.log").read_text(errors="replace")
    # The scheduler names each worker it retires at the end: two, as configured.
    retired = [line for line in log.splitlines() if "distributed.scheduler - Remove worker" in line]
    assert {line.split("name: ")[1].split()[0] for line in retired} == {"0", "1"}


def test_block_sharded_search_at_full_depth_equals_exact_search(stack, trained):
    from tailor.models.index import build_index, depth_parameter
    from tailor.serving.batch import bundle_policy, compute_recommendations
    from tailor.serving.store import RecommendationStore
    from tailor.settings import IndexSettings
    from tailor.stages.data import all_interactions, prepare_data
    from tailor.stages.refresh import serving_bundle

    config, _, _ = trained
    settings = _settings(config, stack)
    with _client_env(stack):
        prepared = prepare_data(settings, stack.root / "check", hold_out_cold=False)
        bundle = serving_bundle(settings, "1", prepared.items)
    assert depth_parameter(bundle.index) == "nprobe"  # what the refresh searched: IVF
    bundle.index = build_index(bundle.model.item_vectors(), IndexSettings(kind="flat"))
    policy = bundle_policy(bundle, 20, settings.rerank, settings.eval.head_share)
    exact = compute_recommendations(bundle, all_interactions(prepared), policy)
    store = RecommendationStore(stack.pg_url("tailor"))
    try:
        for user in exact[C.USER_ID].unique().sort().to_list()[::37]:
            stored = store.read(user)
            want = exact.filter(exact[C.USER_ID] == user)
            assert stored[C.ITEM_ID].to_list() == want[C.ITEM_ID].to_list(), user
            assert np.allclose(stored[C.SCORE].to_numpy(), want[C.SCORE].to_numpy(), atol=1e-5)
    finally:
        store.dispose()


def _serve(config: Path, stack, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tailor.cli", "serve", "--config", str(config)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        env=stack.child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return wait_ready(proc, f"http://127.0.0.1:{port}/ready", poll=0.5)


def test_two_services_on_one_postgresql_store_give_the_same_answers(stack, trained):
    import httpx

    from tailor.serving.store import RecommendationStore

    config, _, _ = trained
    store = RecommendationStore(stack.pg_url("tailor"))
    users = store.users()[::50]
    store.dispose()
    ports = [free_port(), free_port()]
    procs = [_serve(config, stack, port) for port in ports]
    try:
        for user in users:
            answers = [
                httpx.get(f"http://127.0.0.1:{p}/users/{user}/recommendations", timeout=10)
                for p in ports
            ]
            assert [a.status_code for a in answers] == [200, 200]
            assert answers[0].json() == answers[1].json()
            assert len(answers[0].json()["items"]) == 20
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            proc.wait(timeout=60)


@pytest.mark.usefixtures("trained")
def test_a_reader_during_the_swap_sees_old_or_new_lists_never_a_mix(stack):
    """The next refresh publishes 10 per user instead of 20: every read is one or the other."""
    from tailor.serving.store import RecommendationStore

    work = stack.root / "work"
    shorter = _config(stack.root / "tailor-k10.toml", work, k=10)
    store = RecommendationStore(stack.pg_url("tailor"))
    users = store.users()
    before = store.current()
    seen: Counter = Counter()
    stop = threading.Event()

    def read() -> None:
        i = 0
        while not stop.is_set():
            frame = store.read(users[i % len(users)])
            seen[(frame.height, frame[C.RANK].to_list() == list(range(1, frame.height + 1)))] += 1
            i += 7

    reader = threading.Thread(target=read)
    reader.start()
    try:
        refresh = run_deployment(
            stack, "nightly-refresh/nightly-refresh", {"config": str(shorter)}, timeout=600
        )
    finally:
        time.sleep(0.5)  # a few reads of the new lists
        stop.set()
        reader.join(timeout=60)
    after = store.current()
    store.dispose()
    assert refresh["state"] == "COMPLETED", refresh
    assert after.batch_id != before.batch_id and after.n_rows == N_USERS * 10
    assert set(seen) == {(20, True), (10, True)}, seen  # old, new, and nothing else
    assert sum(seen.values()) > 100


def test_data_roots_may_be_s3_urls(stack, tmp_path):
    """`source = "files"` read from the bucket cleans to exactly what the same local files do."""
    import boto3

    from tailor.data.sources import DataError, generate_synthetic
    from tailor.settings import SyntheticSettings, load_settings
    from tailor.stages.data import prepare_data

    raw = generate_synthetic(SyntheticSettings(n_users=80, n_items=40), seed=3)
    local = tmp_path / "local"
    local.mkdir()
    raw.interactions.write_csv(local / "events.csv")
    raw.items.write_parquet(local / "items.parquet")
    with _client_env(stack):
        s3 = boto3.client("s3", endpoint_url=stack.s3_url)
        for name in ("events.csv", "items.parquet"):
            s3.put_object(Bucket=BUCKET, Key=f"data/{name}", Body=(local / name).read_bytes())

        def prepared(root: str, work: Path):
            settings = load_settings(
                workdir=work,
                data={
                    "source": "files",
                    "interactions_path": f"{root}/events.csv",
                    "items_path": f"{root}/items.parquet",
                    "text_template": raw.text_template,
                },
            )
            return prepare_data(settings, work / "data")

        remote = prepared(f"s3://{BUCKET}/data", tmp_path / "w1")
        here = prepared(str(local), tmp_path / "w2")
        assert remote.fingerprint == here.fingerprint and remote.n_interactions > 0
        assert (remote.n_users, remote.n_items) == (here.n_users, here.n_items)
        with pytest.raises(DataError, match=rf"s3://{BUCKET}/nowhere/events\.csv could not be"):
            prepared(f"s3://{BUCKET}/nowhere", tmp_path / "w3")


def test_the_store_suite_passes_on_postgresql(stack):
    """tests/test_store.py (atomic publish, reads during a publish, races, cleanup) against
    the stack's PostgreSQL, in a database of its own."""
    import re

    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=stack.pg_port, user="tailor", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE store_tests")
    conn.close()
    env = {**os.environ, "TAILOR_TEST_POSTGRES_URL": stack.pg_url("store_tests")}
    pytest_args = ["-q", "-p", "no:cacheprovider", "tests/test_store.py", "-k", "postgresql"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    assert passed >= 15
