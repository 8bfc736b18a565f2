"""The service over months: model swaps that free the old model, bounded state, reads that
cannot stall the loop, nothing secret where it does not belong, and metrics to watch.

The real app in-process over one tiny model trained by the real flows for the module; each
test gets its own live log.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import threading
import time
import weakref
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tailor.data.livelog import LiveEvent, LiveLog
from tailor.data.load import load_clean
from tailor.serving.http import create_app
from tailor.serving.service import UserLocks, collect_if_alive, settle_heap
from tailor.serving.state import LiveState
from tests.conftest import new_workdir, tiny_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")

KEY = "ops-write-key-0123456789"
AUTH = {"X-API-Key": KEY}
SERVE = {"poll_seconds": 0, "profile_fields": ["interests"], "write_keys": [KEY]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template) -> Path:
    from flows.pipeline import train_and_refresh

    work = new_workdir(tmp_path_factory.mktemp("ops"), mlflow_template)
    train_and_refresh(settings=tiny_settings(work))
    return work


@pytest.fixture
def settings_for(trained, tmp_path):
    def make(**serve):
        return tiny_settings(
            trained,
            serve={**SERVE, "live_url": f"sqlite:///{tmp_path / 'live.db'}", **serve},
        )

    return make


def _ready(c: TestClient, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while (r := c.get("/ready")).status_code != 200:
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.1)
    return r.json()


def _items(settings) -> list[str]:
    return load_clean(settings).items["item_id"].to_list()


# ---------------------------------------------------------------- model swaps


def test_settling_the_heap_cannot_keep_a_retired_object_alive():
    class Model:
        pass

    model = Model()
    model.me = model  # a reference cycle the model's own code did not break
    alive = weakref.ref(model)
    settle_heap()  # what a load does: the model is frozen with everything else
    del model
    settle_heap()  # the cheap settling of a swap cannot see frozen objects
    assert alive() is not None
    assert collect_if_alive(alive) is False  # the fallback a swap schedules frees it
    assert alive() is None
    gc.unfreeze()


def test_every_swapped_out_model_is_collected(settings_for, tmp_path):
    import mlflow

    from tailor.tracking.registry import promote, register_bundle
    from tailor.tracking.runs import client_for

    settings = settings_for()
    items = _items(settings)
    client = client_for(settings.tracking_uri)
    name, alias = settings.tracking.model_name, settings.tracking.champion_alias
    # The champion's bundle registered again as a second version: the same model, so the
    # swaps change nothing but which object serves.
    bundle = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path)))
    run = client.create_run(
        client.get_experiment_by_name(settings.tracking.experiment).experiment_id
    )
    second = register_bundle(client, run.info.run_id, bundle / "artifacts" / "bundle", name, {})
    client.set_terminated(run.info.run_id)
    try:
        with TestClient(create_app(settings), headers=AUTH) as c:
            _ready(c)
            service = c.app.state.service
            fresh = {"item_id": "fresh-before-swaps", "text": "A Fresh Item"}
            assert c.post("/items", json={"items": [fresh]}).status_code == 200
            assert set(service._inserted) == {"fresh-before-swaps"}
            retired = []
            for swap in range(6):
                retired.append((weakref.ref(service.model), weakref.ref(service.model.model)))
                promote(client, name, alias, second if swap % 2 == 0 else "1")
                assert c.post("/admin/reload").json()["reloaded"] is True
                for i in range(5):
                    body = {"user_id": f"swap-{i}", "session": items[i : i + 3], "k": 5}
                    assert c.post("/recommend", json=body).status_code == 200
            # The new version took the inserted item while it was built: nothing kept for it.
            assert service._inserted == {}
            assert service.item("fresh-before-swaps")["new"] is True
            leaked = [i for i, (live, inner) in enumerate(retired) if live() or inner()]
            assert not leaked, f"swapped-out models still alive: {leaked}"
            text = c.get("/metrics").text
            assert "tailor_model_swaps_total 6.0" in text
            assert "tailor_retired_models_alive 0.0" in text
            assert 'tailor_model_version_info{version="1"} 1.0' in text
    finally:
        client.set_registered_model_alias(name, alias, "1")
        gc.unfreeze()


# ---------------------------------------------------------------- bounded state


def test_histories_keep_the_newest_events_only():
    state = LiveState(histories={}, profiles={}, items={}, max_history=4, positive_threshold=3.0)
    for i in range(10):
        state.add_event("u", f"i{i}", 5.0 if i % 2 else 1.0)
    assert state.histories["u"] == ["i6", "i7", "i8", "i9"]
    assert state.liked["u"] == [False, True, False, True]
    # A reload's snapshot copies no history (the build reads the profile users' lists).
    assert state.snapshot().histories is state.histories


def test_histories_from_the_data_are_bounded_too(settings_for):
    settings = settings_for(max_history_events=3)
    with TestClient(create_app(settings), headers=AUTH) as c:
        _ready(c)
        state = c.app.state.service.state
        assert max(len(h) for h in state.histories.values()) == 3
        assert all(len(state.liked[u]) == len(h) for u, h in state.histories.items())
        items = _items(settings)
        events = [{"user_id": "long", "item_id": i, "kind": "view"} for i in items[:10]]
        assert c.post("/events", json={"events": events}).status_code == 200
        assert state.histories["long"] == items[7:10]
        # Every event still reaches the log, which the nightly run reads whole.
        assert len(LiveLog(settings.live_url).events_of("long")) == 10


def test_user_locks_leave_nothing_behind():
    import asyncio

    locks = UserLocks()
    order = []

    async def hold(user: str, tag: str) -> None:
        async with locks.hold([user]):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    async def main() -> None:
        await asyncio.gather(hold("u", "a"), hold("u", "b"), hold("v", "c"))

    asyncio.run(main())
    assert order.index("a-") < order.index("b+")  # one user's holders take turns
    assert len(locks) == 0


def test_two_requests_restoring_one_evicted_user_keep_both_events(settings_for, monkeypatch):
    import asyncio

    settings = settings_for(max_live_users=1)
    items = _items(settings)
    with TestClient(create_app(settings), headers=AUTH) as c:
        _ready(c)
        service = c.app.state.service

        def post(user, item):
            event = {"user_id": user, "item_id": item, "kind": "view"}
            assert c.post("/events", json={"events": [event]}).status_code == 200

        post("race-a", items[0])
        post("race-b", items[1])  # evicts race-a
        assert "race-a" not in service.state.histories
        append = service.live_log.append_events

        def slow_second_commit(events, origin=None):  # injected: the second request's commit
            # is slow, so the first reads the log (to restore the user) before it is there
            if any(e.item_id == items[3] for e in events):
                time.sleep(0.3)
            append(events, origin=origin)

        monkeypatch.setattr(service.live_log, "append_events", slow_second_commit)

        async def race() -> None:
            now = time.time()
            from datetime import UTC, datetime

            def event(item, offset):
                return LiveEvent(
                    "race-a", item, "view", 1.0, datetime.fromtimestamp(now + offset, UTC)
                )

            await asyncio.gather(
                service.record_events([event(items[2], 1)]),
                service.record_events([event(items[3], 2)]),
            )

        c.portal.call(race)
        assert service.state.histories["race-a"] == [items[0], items[2], items[3]]


# ---------------------------------------------------------------- stores and errors


def test_a_locked_store_answers_503_and_health_stays_up(settings_for):
    settings = settings_for(store_timeout_seconds=0.5)
    store_path = settings.store_url.removeprefix("sqlite:///")
    with TestClient(create_app(settings), headers=AUTH) as c:
        _ready(c)
        user = c.app.state.service.store.users(limit=1)[0]
        assert c.get(f"/users/{user}/recommendations").status_code == 200
        c.app.state.service.store.dispose()
        locker = sqlite3.connect(store_path, isolation_level=None)
        try:
            # Another writer holding the database: nobody else may even read it.
            locker.execute("PRAGMA locking_mode=EXCLUSIVE")
            locker.execute("BEGIN EXCLUSIVE")
            locker.execute("CREATE TABLE IF NOT EXISTS held (x)")
            answers = {}

            def read() -> None:
                answers["read"] = c.get(f"/users/{user}/recommendations")

            reader = threading.Thread(target=read)
            reader.start()
            time.sleep(0.1)
            began = time.monotonic()
            assert c.get("/health").status_code == 200
            assert time.monotonic() - began < 0.3  # the loop is not waiting on the store
            reader.join(10)
            r = answers["read"]
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "unavailable" in r.json()["detail"]
            # Paths and hosts go to the operator's log, not to the caller.
            assert store_path not in r.text and "sqlite" not in r.text
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert c.get(f"/users/{user}/recommendations").status_code == 200


def test_items_a_model_cannot_embed_are_refused_before_the_log(settings_for):
    settings = settings_for()
    with TestClient(create_app(settings), headers=AUTH) as c:
        _ready(c)
        c.app.state.service.model.text_space = False  # injected: vectors came from a file
        r = c.post("/items", json={"items": [{"item_id": "nope", "text": "Not Embeddable"}]})
        assert r.status_code == 409
        assert LiveLog(settings.live_url).items().is_empty()


# ---------------------------------------------------------------- exposure and metrics


def test_reads_beyond_loopback_need_a_key_unless_opened_on_purpose(settings_for, caplog):
    with pytest.raises(ValueError, match=r"serve\.read_keys is empty"):
        create_app(settings_for(host="0.0.0.0"))
    reader = "ops-read-key-0123456789"
    with TestClient(create_app(settings_for(host="0.0.0.0", read_keys=[reader]))) as c:
        _ready(c)
        assert c.post("/recommend", json={"k": 2}).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"X-API-Key": reader}).status_code == 200
    with (
        caplog.at_level("INFO"),
        TestClient(create_app(settings_for(host="0.0.0.0", open_reads=True))) as c,
    ):
        _ready(c)
        assert c.post("/recommend", json={"k": 2}).status_code == 200
    assert "reads are OPEN" in caplog.text


def test_metrics_count_requests_by_route_without_ids(settings_for):
    settings = settings_for()
    with TestClient(create_app(settings), headers=AUTH) as c:
        _ready(c)
        user = c.app.state.service.store.users(limit=1)[0]
        for _ in range(3):
            assert c.get(f"/users/{user}/recommendations").status_code == 200
        assert c.get("/users/nobody-here/recommendations").status_code == 404
        event = {"user_id": "m1", "item_id": _items(settings)[0], "kind": "click"}
        assert c.post("/events", json={"events": [event]}).status_code == 200
        text = c.get("/metrics").text
    route = 'route="/users/{user_id}/recommendations"'
    assert f'tailor_requests_total{{method="GET",{route},status="200"}} 3.0' in text
    assert f'tailor_requests_total{{method="GET",{route},status="404"}} 1.0' in text
    assert user not in text and "nobody-here" not in text
    assert "tailor_store_read_seconds_count 4.0" in text
    assert "tailor_livelog_commit_seconds_count 1.0" in text
    assert "tailor_live_users 1.0" in text
    assert "process_resident_memory_bytes" in text


# ---------------------------------------------------------------- secrets


def test_flow_parameters_in_prefect_carry_no_password(tmp_path, mlflow_template):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.refresh import nightly_refresh

    secret = "hunter2-do-not-store"
    work = new_workdir(tmp_path, mlflow_template)
    settings = tiny_settings(
        work, refresh={"store_url": f"postgresql://tailor:{secret}@127.0.0.1:9/none"}
    )
    with pytest.raises(Exception):  # noqa: B017 - no champion yet: the run fails, stored or not
        nightly_refresh(settings=settings)

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def stored() -> tuple[dict, list[str]]:
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=200)
            run = next(r for r in runs if str(work) in json.dumps(r.parameters))
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )
            return run.parameters, [entry.message for entry in logs]

    parameters, messages = asyncio.run(stored())
    dumped = json.dumps(parameters)
    assert secret not in dumped and "tailor:***@127.0.0.1" in dumped
    assert not any(secret in m for m in messages)


def test_a_body_sent_too_slowly_is_a_408():
    import asyncio

    from tailor.serving.http import _BodyLimit

    reached = []

    async def app(scope, receive, send) -> None:  # the service behind: never reached
        reached.append(scope)

    sent = []

    async def receive() -> dict:  # a client that sent headers and then nothing
        await asyncio.sleep(10)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/events", "headers": []}
    began = time.monotonic()
    asyncio.run(_BodyLimit(app, max_bytes=1000, timeout=0.2)(scope, receive, send))
    assert time.monotonic() - began < 2
    assert sent[0]["status"] == 408 and not reached
    assert b"not sent within 0.2 s" in sent[1]["body"]


# ---------------------------------------------------------------- processes sharing a live log


def test_two_services_on_one_live_log_see_each_others_writes_within_a_second(settings_for):
    settings = settings_for(follow_seconds=0.2)
    items = _items(settings)
    with (
        TestClient(create_app(settings), headers=AUTH) as a,
        TestClient(create_app(settings), headers=AUTH) as b,
    ):
        _ready(a), _ready(b)
        new = {"item_id": "shared-new", "text": "A Documentary About Lighthouses"}
        assert a.post("/items", json={"items": [new]}).status_code == 200
        events = [{"user_id": "shared-user", "item_id": i, "kind": "view"} for i in items[:3]]
        assert a.post("/events", json={"events": events}).status_code == 200

        deadline = time.monotonic() + 1.0
        while True:
            item = b.get("/items/shared-new")
            live = b.post("/recommend", json={"user_id": "shared-user", "k": 3}).json()
            if item.status_code == 200 and live["basis"] == ["history"]:
                break
            assert time.monotonic() < deadline, (item.status_code, live["basis"])
            time.sleep(0.05)
        assert item.json()["new"] is True
        assert b.app.state.service.state.histories["shared-user"] == items[:3]
        # A's own events are not applied to A twice by following.
        time.sleep(0.5)
        assert a.app.state.service.state.histories["shared-user"] == items[:3]
