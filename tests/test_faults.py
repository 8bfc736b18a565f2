"""The fault suite (`pytest -m faults`, `make test-faults`): faults injected on purpose, and what
was lost (the answer must be nothing). README's fault table has one row per test here."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flows.pipeline import train_and_refresh
from flows.refresh import nightly_refresh
from tailor import columns as C
from tailor.data.clean import (
    DUPLICATE_ITEM_ID,
    DUPLICATE_ROW,
    DUPLICATE_USER_ID,
    EMPTY_TEXT,
    INVALID_WEIGHT,
    MISSING_ITEM_ID,
    MISSING_USER_ID,
    UNKNOWN_ITEM,
    UNPARSEABLE_TIMESTAMP,
)
from tailor.data.load import load_clean
from tailor.data.sources import DataError, generate_synthetic
from tailor.serving.store import RecommendationStore, StoreError
from tailor.tracking.runs import client_for
from tests.conftest import CHILD_RUN, tiny_settings, wait_ready, write_toml

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("prefect_harness")]

# Every stage a task wraps, by the module the task calls it through.
STAGES = [
    ("tasks.data", "prepare_data"),
    ("tasks.embed", "tune_encoder"),
    ("tasks.embed", "embed_items"),
    ("tasks.train", "train_recommender"),
    ("tasks.evaluate", "evaluate_models"),
    ("tasks.index", "build_index"),
    ("tasks.register", "bundle_model"),
    ("tasks.evaluate", "evaluate_cold_start"),
    ("tasks.train", "train_production"),
    ("tasks.register", "score_champion"),
    ("tasks.register", "register_model"),
    ("tasks.refresh", "plan_refresh"),
    ("tasks.refresh", "score_block"),
    ("tasks.refresh", "publish_recommendations"),
]


def _flaky_stages(monkeypatch, failures: int) -> Counter:
    """Each stage function raises a transient error on its first `failures` calls."""
    import importlib

    calls: Counter = Counter()
    for module_name, name in STAGES:
        stage = importlib.import_module(module_name).stage
        real = getattr(stage, name)

        def flaky(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            if calls[_name] <= failures:
                raise OSError(f"injected transient failure {calls[_name]} of {_name}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(stage, name, flaky)
    return calls


@pytest.mark.parametrize("failures", [1, 2])
def test_every_task_failing_transiently_is_retried_and_the_run_completes(
    workdir, monkeypatch, failures
):
    settings = tiny_settings(workdir)
    calls = _flaky_stages(monkeypatch, failures)
    result = train_and_refresh(settings=settings)
    for _, name in STAGES:
        assert calls[name] >= failures + 1, name  # every task failed, then ran
    client = client_for(settings.tracking_uri)
    assert client.get_run(result.train.run_id).info.status == "FINISHED"
    store = RecommendationStore(settings.store_url)
    published = store.current()
    assert published is not None and published.n_users == result.refresh.n_users
    store.dispose()


def test_bad_input_is_not_retried(workdir, monkeypatch):
    import tasks.data

    calls = Counter()

    def bad(*args, **kwargs):
        calls["n"] += 1
        raise DataError("injected: items file x.csv has no column 'title'")

    monkeypatch.setattr(tasks.data.stage, "prepare_data", bad)
    with pytest.raises(DataError, match="no column 'title'"):
        train_and_refresh(settings=tiny_settings(workdir))
    assert calls["n"] == 1


# --------------------------------------------------------------------------- fuzzed rows

N_BAD = {"interactions": 7000, "items": 2000, "users": 1000}


def _fuzz_inputs(workdir, seed: int = 0):
    """Synthetic files plus 10,000 rows with exactly one defect each, seeded; the expected
    (file, reason) of every bad row, and the valid row counts."""
    rng = np.random.default_rng(seed)
    raw = generate_synthetic(tiny_settings(workdir).data.synthetic, seed=seed)
    inter, items, users = raw.interactions, raw.items, raw.users
    item_ids = items[C.ITEM_ID].to_list()
    expected: Counter = Counter()

    def pick(values):
        return values[int(rng.integers(len(values)))]

    # Valid values get odd but legal content: unicode, control characters inside text.
    bad_rows = []
    for n in range(N_BAD["interactions"]):
        row = {
            C.USER_ID: f"fz{n}",
            C.ITEM_ID: pick(item_ids),
            C.TIMESTAMP: str(1_000_000 + n),
            C.WEIGHT: "1",
        }
        kind = int(rng.integers(6))
        if kind == 0:
            row[C.USER_ID], reason = pick([None, "", "  \t "]), MISSING_USER_ID
        elif kind == 1:
            row[C.ITEM_ID], reason = pick([None, "", "   "]), MISSING_ITEM_ID
        elif kind == 2:
            row[C.TIMESTAMP] = pick(["yesterday", "", "13/45/2020", "NaN", "12:00 pm", "∞"])
            reason = UNPARSEABLE_TIMESTAMP
        elif kind == 3:
            row[C.WEIGHT], reason = pick(["-1", "nan", "inf", "abc", "", "1e999"]), INVALID_WEIGHT
        elif kind == 4:
            row[C.ITEM_ID], reason = f"no-such-item-{n}\u00e9", UNKNOWN_ITEM
        else:
            row = inter.row(int(rng.integers(inter.height)), named=True)
            reason = DUPLICATE_ROW
        bad_rows.append(row)
        expected[("interactions", reason)] += 1
    bad_inter = pl.DataFrame(bad_rows, schema=inter.schema)

    item_rows = []
    for n in range(N_BAD["items"]):
        row = {c: f"ok {n} \u2603" for c in items.columns}
        row[C.ITEM_ID] = f"fz-item-{n}"
        kind = int(rng.integers(3))
        if kind == 0:
            row[C.ITEM_ID], reason = pick([None, "", " "]), MISSING_ITEM_ID
        elif kind == 1:
            row.update({c: pick([None, ""]) for c in ("title", "description")})
            reason = EMPTY_TEXT
        else:
            row[C.ITEM_ID], reason = pick(item_ids), DUPLICATE_ITEM_ID
        item_rows.append(row)
        expected[("items", reason)] += 1
    bad_items = pl.DataFrame(item_rows, schema=items.schema)

    user_rows = []
    for _ in range(N_BAD["users"]):
        row = {c: "x\x07y" for c in users.columns}
        if rng.random() < 0.5:
            row[C.USER_ID], reason = pick([None, "", "\t"]), MISSING_USER_ID
        else:
            row[C.USER_ID], reason = pick(users[C.USER_ID].to_list()), DUPLICATE_USER_ID
        user_rows.append(row)
        expected[("users", reason)] += 1
    bad_users = pl.DataFrame(user_rows, schema=users.schema)

    paths = {}
    for name, good, bad in (
        ("interactions", inter, bad_inter),
        ("items", items, bad_items),
        ("users", users, bad_users),
    ):
        # The valid rows first: a duplicate is every repeat after the first valid row.
        paths[name] = workdir / f"{name}.parquet"
        pl.concat([good, bad[rng.permutation(bad.height).tolist()]]).write_parquet(paths[name])
    good = {"interactions": inter.height, "items": items.height, "users": users.height}
    return paths, expected, good, raw


def test_ten_thousand_fuzzed_rows_are_each_quarantined_with_their_reason(workdir):
    paths, expected, good, raw = _fuzz_inputs(workdir)
    settings = tiny_settings(
        workdir,
        data={
            "source": "files",
            "interactions_path": paths["interactions"],
            "items_path": paths["items"],
            "users_path": paths["users"],
            "columns": {"weight": "weight"},
            "text_template": raw.text_template,
            "label_template": raw.label_template,
        },
    )
    clean = load_clean(settings)
    assert sum(expected.values()) == 10_000
    # Every bad row is in the quarantine with the reason it was made to fail.
    sources = {clean.report[k]["file"]: k for k in ("interactions", "items", "users")}
    found = Counter(
        (sources[s], r) for s, r in clean.quarantine.select(C.SOURCE, C.REASON).iter_rows()
    )
    assert found == expected
    # Every valid row is kept, and every count adds up.
    assert clean.interactions.height == good["interactions"]
    assert clean.items.height == good["items"]
    assert clean.users.height == good["users"]
    for entry in clean.report.values():
        assert entry["rows_in"] == entry["rows_out"] + sum(entry["rejected"].values())
    assert clean.quarantine.height == 10_000


# --------------------------------------------------------------------------- two refreshes


def test_two_refreshes_at_once_leave_one_complete_batch(workdir):
    settings = tiny_settings(workdir, refresh={"k": 5, "chunk_rows": 20})
    train_and_refresh(settings=settings)
    store = RecommendationStore(settings.store_url)
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(nightly_refresh(settings=settings))
        except StoreError as e:  # the one that lost the race says so
            outcomes.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(outcomes) == 2
    done = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert done, f"neither refresh published: {refused}"
    for e in refused:  # the one that lost the race says so, and published nothing
        assert "nothing was published" in str(e)
    published = store.current()
    assert published.batch_id in {o.batch_id for o in done}
    # What readers see is one batch, complete: every user's list, of that batch's version.
    users = store.users()
    lists = [store.read(u) for u in users]
    assert sum(frame.height for frame in lists) == published.n_rows
    assert len(users) == published.n_users
    assert {v for frame in lists for v in frame[C.MODEL_VERSION].to_list()} == {
        published.model_version
    }
    store.dispose()


# --------------------------------------------------------------------------- MLflow down


def test_mlflow_unreachable_mid_run_is_a_clear_error_and_nothing_is_published(workdir, monkeypatch):
    from mlflow import MlflowClient

    settings = tiny_settings(workdir)
    store = RecommendationStore(settings.store_url)
    assert store.current() is None
    real = MlflowClient.log_batch
    calls = Counter()

    def unreachable(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # settings and data logged; then the server goes away
            raise ConnectionError("injected: tracking server at http://mlflow:5000 unreachable")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", unreachable)
    with pytest.raises(Exception, match="unreachable"):
        train_and_refresh(settings=settings)
    monkeypatch.setattr(MlflowClient, "log_batch", real)
    # Nothing reached readers, and no version was registered or promoted.
    assert store.current() is None
    client = client_for(settings.tracking_uri)
    assert client.search_model_versions(f"name = '{settings.tracking.model_name}'") == []
    store.dispose()


# --------------------------------------------------------------------------- kill -9

KILL_POINTS = 10


def _config(workdir, path, **serve) -> Path:
    """The tiny settings as a TOML file, for the CLI in a child process."""
    return write_toml(
        path,
        {
            **CHILD_RUN,
            "refresh": {"k": 20, "chunk_rows": 200},
            "serve": {"poll_seconds": 0, "profile_fields": ["interests"], **serve},
        },
    )


def _child_env() -> dict[str, str]:
    # The child makes its own Prefect and MLflow environment from the workdir, as a user's would.
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("TAILOR_", "PREFECT_", "MLFLOW_"))
    }


def _cli(config, workdir, *args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tailor.cli", *args, "--config", str(config)]
    cmd += ["--workdir", str(workdir)]
    return subprocess.Popen(
        cmd,
        env=_child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: kill -9 takes its helpers too
    )


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _statuses(url: str) -> Counter:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return Counter(s for (s,) in conn.execute(text("select status from batches")))
    finally:
        engine.dispose()


def _lists(store: RecommendationStore) -> dict[str, list]:
    return {u: store.read(u).rows() for u in store.users()}


KEY = "fault-suite-key-0123456789"


@pytest.fixture(scope="module")
def cli_work(tmp_path_factory, mlflow_template) -> Path:
    """A workdir trained and refreshed by `tailor run` in a child process, as a user would."""
    from tests.conftest import new_workdir

    work = new_workdir(tmp_path_factory.mktemp("cli"), mlflow_template)
    assert _cli(_config(work, work / "train.toml"), work, "run").wait(timeout=900) == 0
    return work


def _serve(config: Path, work: Path, port: int) -> subprocess.Popen:
    return wait_ready(_cli(config, work, "serve"), f"http://127.0.0.1:{port}/ready")


def test_kill_9_of_the_refresh_at_seeded_points_keeps_complete_lists(cli_work, tmp_path):
    work = cli_work
    config = _config(work, tmp_path / "tailor.toml")
    settings = tiny_settings(work)  # only for its store URL
    store = RecommendationStore(settings.store_url)

    # How long publishing takes here: from its first row in the batch table to the switch.
    calibrate = _cli(config, work, "refresh")
    started = switched = None
    while calibrate.poll() is None and switched is None:
        writing = _statuses(settings.store_url)["writing"]
        if started is None and writing:
            started = time.monotonic()
        elif started is not None and not writing:
            switched = time.monotonic()
        time.sleep(0.002)
    assert calibrate.wait(timeout=300) == 0 and started is not None and switched is not None
    # Seeded points over the write and a little past the switch.
    window = (switched - started) * 1.2

    rng = np.random.default_rng(0)
    outcomes = Counter()
    for delay in rng.uniform(0.0, window, KILL_POINTS):
        before, lists = store.current(), _lists(store)
        proc = _cli(config, work, "refresh")
        deadline = time.monotonic() + 300
        while not _statuses(settings.store_url)["writing"] and proc.poll() is None:
            assert time.monotonic() < deadline, "the refresh never started writing"
            time.sleep(0.002)
        time.sleep(delay)
        _kill(proc)
        now = store.current()
        if now.batch_id == before.batch_id:
            outcomes["previous lists"] += 1
            assert _lists(store) == lists  # exactly yesterday's, not a row missing
        else:
            outcomes["new complete lists"] += 1  # killed after the switch
        # Either way what readers see is one whole batch.
        assert sum(len(v) for v in _lists(store).values()) == now.n_rows
    assert outcomes["previous lists"] >= 1, outcomes
    print(
        f"\nfault: refresh killed at {KILL_POINTS} seeded points in a {window:.3f} s window: "
        f"{dict(outcomes)}, lost rows 0"
    )
    # The next refresh publishes and removes what the killed ones left behind.
    final = _cli(config, work, "refresh")
    assert final.wait(timeout=300) == 0
    assert _statuses(settings.store_url)["published"] == 1
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.store_url)
    with engine.connect() as conn:
        stray = conn.execute(
            text(
                "select count(*) from recommendations r join batches b using (batch_id) "
                "where b.status != 'published'"
            )
        ).scalar_one()
    engine.dispose()
    assert stray == 0
    store.dispose()


def test_kill_9_of_the_service_under_load_loses_no_acknowledged_event(cli_work, tmp_path):
    import httpx

    from tailor.data.livelog import LiveLog

    work, key, port = cli_work, KEY, _free_port()
    config = _config(work, tmp_path / "tailor.toml", write_keys=[key], port=port)
    live_url = tiny_settings(work).live_url
    synthetic = {"n_users": 600, "n_items": 80, "n_topics": 4, "events_per_user": 12}
    raw = generate_synthetic(tiny_settings(work, data={"synthetic": synthetic}).data.synthetic, 42)
    item_ids = raw.items[C.ITEM_ID].to_list()

    def serve() -> subprocess.Popen:
        return _serve(config, work, port)

    proc = serve()
    acknowledged: list[tuple[str, str]] = []
    stop = threading.Event()

    def post(worker: int) -> None:
        rng = np.random.default_rng(worker)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}) as c:
            n = 0
            while not stop.is_set():
                batch = [
                    {
                        "user_id": f"load-{worker}-{n}-{j}",
                        "item_id": item_ids[int(rng.integers(len(item_ids)))],
                        "kind": "view",
                    }
                    for j in range(5)
                ]
                n += 1
                try:
                    r = c.post("/events", json={"events": batch}, timeout=10)
                except httpx.TransportError:
                    return  # the service died mid-request: not acknowledged
                if r.status_code == 200:
                    acknowledged.extend((e["user_id"], e["item_id"]) for e in batch)

    workers = [threading.Thread(target=post, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    time.sleep(float(np.random.default_rng(1).uniform(2.0, 4.0)))
    _kill(proc)
    stop.set()
    for w in workers:
        w.join(timeout=60)
    assert len(acknowledged) > 50

    proc = serve()  # restarts on the same live log
    try:
        log_events = LiveLog(live_url).events()
        users, ids = log_events[C.USER_ID].to_list(), log_events[C.ITEM_ID].to_list()
        logged = Counter(
            pair for pair in zip(users, ids, strict=True) if pair[0].startswith("load-")
        )
        missing = [e for e in acknowledged if logged[e] == 0]
        assert missing == [], f"{len(missing)} acknowledged events lost"
        assert max(logged.values()) == 1  # none twice
        print(
            f"\nfault: service killed under load: {len(acknowledged)} events acknowledged, "
            f"{sum(logged.values())} in the log, 0 lost, 0 twice"
        )
    finally:
        _kill(proc)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_api_keeps_its_openapi_contract_under_fuzzing(cli_work, tmp_path):
    """Every operation of the service's own OpenAPI description, 40 seeded examples each, sent
    to a real server: no server error and no response outside the description (statuses,
    bodies, headers, content types), and a write without a key is refused."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import checks

    port = _free_port()
    config = _config(cli_work, tmp_path / "tailor.toml", write_keys=[KEY], port=port)
    proc = _serve(config, cli_work, port)
    base = f"http://127.0.0.1:{port}"
    wanted = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        checks.response_headers_conformance,
        checks.ignored_auth,
    ]
    try:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        failures: dict[str, str] = {}
        calls = Counter()

        def fuzz(operation) -> None:
            label = operation.label

            @settings(
                max_examples=40,
                derandomize=True,  # seeded: the same cases every run
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )
            @given(case=operation.as_strategy())
            def check(case):
                calls[label] += 1
                try:
                    case.call_and_validate(base_url=base, headers={"X-API-Key": KEY}, checks=wanted)
                except BaseException as e:  # hypothesis would stop at the first: collect all
                    failures.setdefault(label, str(e)[:2000])

            check()

        for result in schema.get_all_operations():
            fuzz(result.ok())
        assert len(calls) >= 8  # every operation was exercised
        assert failures == {}, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
        print(
            f"\nfault: fuzzed {sum(calls.values())} requests over {len(calls)} operations: "
            "0 server errors, 0 responses outside the schema"
        )
    finally:
        _kill(proc)
