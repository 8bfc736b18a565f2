"""Faults a long-running service meets (make test-faults): a model swap under load, a store
locked by another writer, a live log on a full disk. The real `tailor serve` in a child
process where the fault is outside it; in-process where the fault is injected into it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import event

from tailor import columns as C
from tailor.data.livelog import LiveLog
from tailor.data.load import load_clean
from tests.conftest import tiny_settings
from tests.test_faults import KEY, _cli, _config, _free_port, _kill, _serve

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("prefect_harness")]
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def served_work(tmp_path_factory, mlflow_template) -> Path:
    """A workdir trained and refreshed by `tailor run` in a child process, as a user would."""
    from tests.conftest import new_workdir

    work = new_workdir(tmp_path_factory.mktemp("served"), mlflow_template)
    assert _cli(_config(work, work / "train.toml"), work, "run").wait(timeout=900) == 0
    return work


def _load(port: int, items: list[str], stop: threading.Event, out: dict, worker: int) -> None:
    """Mixed traffic until `stop`: live sessions, stored reads, events; every answer counted,
    every acknowledged event remembered."""
    rng = np.random.default_rng(worker)
    statuses, acked = out.setdefault("statuses", Counter()), out.setdefault("acked", [])
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as c:
        n = 0
        while not stop.is_set():
            n += 1
            pick = [items[int(i)] for i in rng.integers(len(items), size=3)]
            user = f"fault-{worker}-{n % 7}"
            try:
                r = c.post("/recommend", json={"user_id": user, "session": pick, "k": 5})
                statuses[("recommend", r.status_code)] += 1
                r = c.get(f"/users/{out['stored_user']}/recommendations")
                statuses[("stored", r.status_code)] += 1
                events = [{"user_id": user, "item_id": pick[0], "kind": "view"}]
                r = c.post("/events", json={"events": events})
                statuses[("events", r.status_code)] += 1
                if r.status_code == 200:
                    acked.append((user, pick[0]))
            except httpx.TransportError as e:
                statuses[("transport", type(e).__name__)] += 1


def _logged(live_url: str) -> Counter:
    events = LiveLog(live_url).events()
    return Counter(zip(events[C.USER_ID].to_list(), events[C.ITEM_ID].to_list(), strict=True))


def test_model_swaps_under_load_answer_every_request_and_free_the_old_model(served_work, tmp_path):
    import mlflow

    from tailor.tracking.registry import promote, register_bundle
    from tailor.tracking.runs import client_for

    settings = tiny_settings(served_work)
    client = client_for(settings.tracking_uri)
    name, alias = settings.tracking.model_name, settings.tracking.champion_alias
    bundle = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path)))
    experiment = client.get_experiment_by_name(settings.tracking.experiment).experiment_id
    run = client.create_run(experiment)
    second = register_bundle(client, run.info.run_id, bundle / "artifacts" / "bundle", name, {})
    client.set_terminated(run.info.run_id)

    port = _free_port()
    live_url = f"sqlite:///{tmp_path / 'live.db'}"
    config = _config(
        served_work, tmp_path / "t.toml", write_keys=[KEY], port=port, live_url=live_url
    )
    proc = _serve(config, served_work, port)
    items = load_clean(settings).items[C.ITEM_ID].to_list()
    out = {"stored_user": load_clean(settings).interactions[C.USER_ID][0]}
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(port, items, stop, out, w)) for w in range(3)]
    try:
        for w in workers:
            w.start()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=120) as c:
            for swap in range(4):
                time.sleep(1.0)
                promote(client, name, alias, second if swap % 2 == 0 else "1")
                assert c.post("/admin/reload").json()["reloaded"] is True
            time.sleep(1.0)
            stop.set()
            for w in workers:
                w.join(timeout=60)
            metrics = c.get("/metrics").text
        statuses = out["statuses"]
        bad = {k: v for k, v in statuses.items() if k[1] not in (200, 404)}
        assert not bad, f"errors under swaps: {bad}"
        assert statuses[("recommend", 200)] > 20
        assert "tailor_model_swaps_total 4.0" in metrics
        assert "tailor_retired_models_alive 0.0" in metrics
        logged = _logged(live_url)
        assert all(logged[e] >= 1 for e in out["acked"])
        print(
            f"\nfault: 4 model swaps under load: {sum(statuses.values())} answers, "
            f"{len(out['acked'])} events acknowledged and logged, 0 errors, old models freed"
        )
    finally:
        stop.set()
        _kill(proc)
        client.set_registered_model_alias(name, alias, "1")


def test_a_store_locked_for_ten_seconds_keeps_health_up_and_loses_nothing(served_work, tmp_path):
    from fastapi.testclient import TestClient

    from tailor.serving.http import create_app

    live_url = f"sqlite:///{tmp_path / 'live.db'}"
    settings = tiny_settings(
        served_work,
        serve={
            "poll_seconds": 0,
            "write_keys": [KEY],
            "live_url": live_url,
            "store_timeout_seconds": 1.0,
        },
    )
    items = load_clean(settings).items[C.ITEM_ID].to_list()
    stored_user = load_clean(settings).interactions[C.USER_ID][0]
    stop = threading.Event()
    health: list[tuple[int, float]] = []
    reads: Counter = Counter()
    retry_after: set[str] = set()
    acked: list[tuple[str, str]] = []

    with TestClient(create_app(settings), headers=AUTH) as c:
        deadline = time.monotonic() + 120
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)

        def watch() -> None:
            while not stop.is_set():
                began = time.monotonic()
                health.append((c.get("/health").status_code, time.monotonic() - began))
                time.sleep(0.1)

        def read() -> None:
            while not stop.is_set():
                r = c.get(f"/users/{stored_user}/recommendations")
                reads[r.status_code] += 1
                if r.status_code == 503:
                    retry_after.add(r.headers.get("retry-after", ""))

        def post(worker: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                pair = (f"locked-{worker}-{n}", items[n % len(items)])
                if c.post("/events", json={"events": [_event(*pair)]}).status_code == 200:
                    acked.append(pair)

        threads = [threading.Thread(target=f) for f in (watch, read, read)]
        threads += [threading.Thread(target=post, args=(w,)) for w in range(2)]
        # The store's pooled connections are closed, as after an idle spell; then another
        # writer takes the file for 10 s (exclusive: nobody else may even read it).
        c.app.state.service.store.dispose()
        locker = sqlite3.connect(
            settings.store_url.removeprefix("sqlite:///"), isolation_level=None
        )
        locker.execute("PRAGMA locking_mode=EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
        locker.execute("CREATE TABLE IF NOT EXISTS held (x)")
        try:
            for t in threads:
                t.start()
            time.sleep(10.0)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert c.get(f"/users/{stored_user}/recommendations").status_code == 200
    assert all(code == 200 for code, _ in health) and len(health) > 20
    assert max(s for _, s in health) < 1.0, "health waited on the store"
    assert reads[503] > 0 and reads[200] > 0 and set(reads) <= {200, 503}
    assert retry_after == {"1"}
    logged = _logged(live_url)
    assert acked and all(logged[e] == 1 for e in acked)
    print(
        f"\nfault: store locked 10 s: health {len(health)}x 200 (slowest "
        f"{max(s for _, s in health) * 1000:.0f} ms), {reads[503]} reads answered 503 + "
        f"Retry-After, {reads[200]} after it, {len(acked)} events acknowledged, 0 lost"
    )


def test_a_full_disk_under_the_live_log_acknowledges_nothing_it_did_not_store(
    served_work, tmp_path
):
    from fastapi.testclient import TestClient

    from tailor.serving.http import create_app

    live_url = f"sqlite:///{tmp_path / 'live.db'}"
    settings = tiny_settings(
        served_work,
        serve={"poll_seconds": 0, "write_keys": [KEY], "live_url": live_url},
    )
    items = load_clean(settings).items[C.ITEM_ID].to_list()
    with TestClient(create_app(settings), headers=AUTH) as c:
        deadline = time.monotonic() + 120
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        log = c.app.state.service.live_log
        assert c.post("/events", json={"events": [_event("u0", items[0])]}).status_code == 200
        engine = log._get_engine()
        limit = {"pages": 0}

        @event.listens_for(engine, "connect")
        def _cap(dbapi_conn, _record):  # injected: the disk has no room beyond `pages`
            if limit["pages"]:
                dbapi_conn.execute(f"PRAGMA max_page_count={limit['pages']}")

        pages = sqlite3.connect(log._url.database).execute("PRAGMA page_count").fetchone()[0]
        limit["pages"] = pages + 2
        engine.dispose()
        acked, refused = [], 0
        for n in range(400):
            batch = [_event(f"full-{n}", items[j % len(items)]) for j in range(20)]
            r = c.post("/events", json={"events": batch})
            if r.status_code == 200:
                acked.extend((e["user_id"], e["item_id"]) for e in batch)
            else:
                assert r.status_code == 503 and r.headers["retry-after"]
                assert "live log is unavailable" in r.json()["detail"]
                refused += 1
        assert refused > 0 and acked  # the disk filled up part way
        # Space comes back: events are taken again.
        limit["pages"] = 0
        engine.dispose()
        assert c.post("/events", json={"events": [_event("after", items[1])]}).status_code == 200
    logged = _logged(live_url)
    assert all(logged[e] == 1 for e in acked)
    stored = {k for k in logged if k[0].startswith("full-")}
    assert stored == set(acked), "the log holds events that were answered 503"
    print(
        f"\nfault: live log disk full: {len(acked)} events acknowledged and stored, "
        f"{refused} requests answered 503, none stored half"
    )


def _event(user: str, item: str) -> dict:
    return {"user_id": user, "item_id": item, "kind": "view"}


def test_worker_processes_on_one_port_share_what_each_is_told(served_work, tmp_path):
    """`tailor serve --workers 2`: an event posted to whichever worker answers reaches a
    request on the other within a second (each follows the shared live log)."""
    settings = tiny_settings(served_work)
    items = load_clean(settings).items[C.ITEM_ID].to_list()
    port = _free_port()
    config = _config(
        served_work,
        tmp_path / "t.toml",
        write_keys=[KEY],
        port=port,
        live_url=f"sqlite:///{tmp_path / 'live.db'}",
        workers=2,
    )
    proc = _serve(config, served_work, port)
    try:
        base = f"http://127.0.0.1:{port}"
        late = 0
        for n in range(20):
            user = f"worker-user-{n}"
            # A new connection per request: the kernel spreads them over the workers.
            event = {"user_id": user, "item_id": items[n % len(items)], "kind": "view"}
            r = httpx.post(f"{base}/events", json={"events": [event]}, headers=AUTH)
            assert r.status_code == 200
            deadline = time.monotonic() + 1.0
            while True:
                body = {"user_id": user, "k": 3}
                basis = [
                    httpx.post(f"{base}/recommend", json=body, headers=AUTH).json()["basis"]
                    for _ in range(4)
                ]
                if all(b == ["history"] for b in basis):
                    break
                late += 1
                assert time.monotonic() < deadline, f"{user}: {basis}"
                time.sleep(0.05)
        print(f"\nfault: 2 workers, 20 users: every event seen by both within 1 s ({late} retries)")
    finally:
        _kill(proc)


def test_connections_beyond_the_limit_get_503_at_once(served_work, tmp_path):
    """`serve.max_concurrency`: a flood of connections is turned away, not queued without end."""
    import socket

    port = _free_port()
    config = _config(served_work, tmp_path / "t.toml", port=port, max_concurrency=3)
    proc = _serve(config, served_work, port)
    held = []
    try:
        # Two idle keep-alive connections, and a third one is at the limit (uvicorn counts
        # the connection asking too).
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in s.recv(4096)
            held.append(s)
        began = time.monotonic()
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert r.status_code == 503 and time.monotonic() - began < 2
        for s in held:
            s.close()
        held.clear()
        deadline = time.monotonic() + 10
        while httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for s in held:
            s.close()
        _kill(proc)
