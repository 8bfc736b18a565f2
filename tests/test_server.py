"""The real-time service: the real app in-process (TestClient) and one real server on loopback.

One tiny model is trained and refreshed by the real flows for the whole module; each test gets
its own live log, so items and events posted by one test never reach another.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tailor.data.livelog import LiveLog
from tailor.data.load import load_clean
from tailor.ranking.explain import PROFILE_REASON
from tailor.serving.http import create_app
from tailor.serving.state import profile_text
from tailor.serving.store import RecommendationStore
from tailor.settings import Settings
from tests.conftest import new_workdir, tiny_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")

KEY = "test-write-key-0123456789"
AUTH = {"X-API-Key": KEY}
SERVE = {
    "poll_seconds": 0,
    "profile_fields": ["interests"],
    "max_body_bytes": 4096,
    "write_keys": [KEY],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template) -> Path:
    """A workdir with a registered champion and a published store, made by the real flows."""
    from flows.pipeline import train_and_refresh

    work = new_workdir(tmp_path_factory.mktemp("served"), mlflow_template)
    train_and_refresh(settings=tiny_settings(work))
    return work


@pytest.fixture
def settings_for(trained, tmp_path):
    """Settings over the trained workdir with a live log of this test's own."""

    def make(**serve) -> Settings:
        return tiny_settings(
            trained,
            serve={**SERVE, "live_url": f"sqlite:///{tmp_path / 'live.db'}", **serve},
        )

    return make


def _wait_ready(client, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/ready")
        if r.status_code == 200:
            return r.json()
        assert time.monotonic() < deadline, f"not ready: {r.json()}"
        time.sleep(0.2)


@pytest.fixture
def client(settings_for):
    with TestClient(create_app(settings_for()), headers=AUTH) as c:
        _wait_ready(c)
        yield c


def _known_user(settings: Settings) -> tuple[str, list[str]]:
    clean = load_clean(settings)
    first = clean.interactions.row(0, named=True)["user_id"]
    items = clean.interactions.filter(clean.interactions["user_id"] == first)["item_id"].to_list()
    return first, items


def test_health_readiness_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] is True
    assert ready["model_version"] == "1"
    assert ready["items"] == 80 and ready["users"] == 60
    spec = client.get("/openapi.json").json()
    assert {"/recommend", "/items", "/events", "/users/{user_id}/recommendations"} <= set(
        spec["paths"]
    )
    # The deployment's limits are part of the published contract.
    k = spec["components"]["schemas"]["RecommendRequest"]["properties"]["k"]
    assert k["maximum"] == 100


def test_precomputed_list_is_the_published_one(client, settings_for):
    settings = settings_for()
    store = RecommendationStore(settings.store_url)
    try:
        user = store.users()[0]
        expected = store.read(user)["item_id"].to_list()
    finally:
        store.dispose()
    body = client.get(f"/users/{user}/recommendations", params={"k": 3}).json()
    assert [i["item_id"] for i in body["items"]] == expected[:3]
    assert [i["rank"] for i in body["items"]] == [1, 2, 3]
    missing = client.get("/users/nobody/recommendations")
    assert missing.status_code == 404
    assert "POST /recommend" in missing.json()["detail"]


def test_live_recommendations_from_history_session_query_and_profile(client, settings_for):
    settings = settings_for()
    user, seen = _known_user(settings)

    # Strength 0: the model's own order (the default re-ranks a little towards the tail).
    by_user = client.post("/recommend", json={"user_id": user, "k": 10, "tail_strength": 0}).json()
    assert by_user["basis"] == ["history"]
    ids = [i["item_id"] for i in by_user["items"]]
    assert len(ids) == 10 and not set(ids) & set(seen)
    assert all(i["reason"].startswith("because you liked") for i in by_user["items"])
    scores = [i["score"] for i in by_user["items"]]
    assert scores == sorted(scores, reverse=True)

    # The session moves the list and is excluded; unknown ids are reported, not fatal.
    session = ids[:3]
    with_session = client.post(
        "/recommend",
        json={"user_id": user, "session": [*session, "no-such-item"], "exclude": [ids[5]]},
    ).json()
    got = [i["item_id"] for i in with_session["items"]]
    assert with_session["basis"] == ["history", "session"]
    assert with_session["unknown_items"] == ["no-such-item"]
    assert not set(got) & {*session, ids[5]}
    assert any("just viewed" in i["reason"] for i in with_session["items"])

    # A query alone is a text search: the item whose text it is comes first.
    clean = load_clean(settings)
    target = clean.items.row(7, named=True)
    by_query = client.post("/recommend", json={"query": target["text"], "k": 5}).json()
    assert by_query["basis"] == ["query"]
    assert by_query["items"][0]["item_id"] == target["item_id"]
    assert by_query["items"][0]["reason"].startswith("matches your search")

    # A profile alone borrows from the users whose profile reads like it.
    profile = clean.users.row(0, named=True)
    by_profile = client.post(
        "/recommend", json={"profile": {"interests": profile["interests"]}, "k": 5}
    ).json()
    assert by_profile["basis"] == ["profile"]
    # The reason says why without echoing what is known about the user.
    text = profile_text({"interests": profile["interests"]}, ["interests"])
    assert all(i["reason"] == PROFILE_REASON for i in by_profile["items"])
    assert not any(profile["interests"] in i["reason"] for i in by_profile["items"]) and text

    # Nobody at all: the most popular items.
    anonymous = client.post("/recommend", json={"k": 4}).json()
    assert anonymous["basis"] == ["popularity"]
    assert len(anonymous["items"]) == 4


def test_tail_knob_shows_more_tail_items(client, settings_for):
    user, _ = _known_user(settings_for())
    tail_share = []
    for strength in (0.0, 1.0):
        body = client.post(
            "/recommend", json={"user_id": user, "k": 10, "tail_strength": strength}
        ).json()
        tail = [client.get(f"/items/{i['item_id']}").json()["tail"] for i in body["items"]]
        tail_share.append(sum(tail) / len(tail))
    assert tail_share[1] > tail_share[0]


def test_inserted_item_is_recommended_next_request_and_reaches_the_nightly_data(
    client, settings_for
):
    text = "Zebra Submarine Opera (2026). Genres: Musical, Adventure"
    r = client.post(
        "/items", json={"items": [{"item_id": "zso", "text": text, "label": "Zebra Opera"}]}
    )
    assert r.status_code == 200
    assert r.json()["inserted"] == ["zso"] and r.json()["updated"] == []

    found = client.post("/recommend", json={"query": "zebra submarine opera", "k": 3}).json()
    assert found["items"][0]["item_id"] == "zso"
    assert found["items"][0]["new"] is True
    assert found["items"][0]["reason"].startswith("new: ")
    assert client.get("/items/zso").json()["label"] == "Zebra Opera"

    # Updating keeps the id, changes the text; both are in the log the nightly run reads.
    r = client.post("/items", json={"items": [{"item_id": "zso", "text": text + ", Whales"}]})
    assert r.json() == {"model_version": "1", "inserted": [], "updated": ["zso"]}
    items = load_clean(settings_for()).items
    row = items.filter(items["item_id"] == "zso").row(0, named=True)
    assert row["text"].endswith("Whales")


def test_events_apply_at_once_and_survive_a_restart(settings_for):
    settings = settings_for()
    user, seen = _known_user(settings)
    with TestClient(create_app(settings), headers=AUTH) as c:
        _wait_ready(c)
        before = [
            i["item_id"] for i in c.post("/recommend", json={"user_id": user}).json()["items"]
        ]
        watched = before[0]
        r = c.post(
            "/events",
            json={"events": [{"user_id": user, "item_id": watched, "kind": "rating", "value": 4}]},
        )
        assert r.json() == {"accepted": 1}
        after = [i["item_id"] for i in c.post("/recommend", json={"user_id": user}).json()["items"]]
        assert watched not in after  # now part of the history: seen, so not recommended

    log = LiveLog(settings.live_url)
    events = log.events()
    log.dispose()
    assert events.select("user_id", "item_id", "kind", "weight").rows() == [
        (user, watched, "rating", 4.0)
    ]
    # A new process reads the log back: the event is still the user's latest.
    with TestClient(create_app(settings), headers=AUTH) as c:
        _wait_ready(c)
        again = [i["item_id"] for i in c.post("/recommend", json={"user_id": user}).json()["items"]]
        assert watched not in again
        assert c.app.state.service.state.histories[user][-1] == watched
    # And the next nightly run trains on it.
    clean = load_clean(settings)
    mine = clean.interactions.filter(clean.interactions["user_id"] == user)
    assert mine.height == len(seen) + 1
    assert clean.report["live_events"]["rows_out"] == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("post", "/recommend", {"k": 0}, 422, "greater than or equal to 1"),
        ("post", "/recommend", {"k": 101}, 422, "less than or equal to 100"),
        ("post", "/recommend", {"session": "1"}, 422, "valid list"),
        ("post", "/recommend", {"user": "1"}, 422, "Extra inputs"),
        ("post", "/recommend", {"session": ["a"] * 201}, 422, "at most 200"),
        ("post", "/recommend", {"profile": {"age": "9"}}, 422, "Extra inputs"),
        ("post", "/recommend", {"query_weight": False}, 422, "not a boolean"),
        ("post", "/recommend", {"k": True}, 422, "not a boolean"),
        ("post", "/recommend", {"tail_strength": 2}, 422, "less than or equal to 1"),
        ("post", "/recommend", {"query": ""}, 422, "at least 1 character"),
        ("post", "/items", {"items": []}, 422, "at least 1 item"),
        ("post", "/items", {"items": [{"item_id": "a", "text": "  "}]}, 422, "at least 1"),
        ("post", "/events", {"events": [{"user_id": "u", "item_id": "i"}]}, 422, "kind"),
        (
            "post",
            "/events",
            {"events": [{"user_id": "u", "item_id": "i", "kind": "rating"}]},
            422,
            "value",
        ),
        (
            "post",
            "/events",
            {"events": [{"user_id": "u", "item_id": "nope", "kind": "view"}]},
            404,
            "unknown item ids",
        ),
        ("post", "/recommend", {"query": "x" * 5000}, 413, "limit is 4096"),
        ("get", "/users/1/recommendations?k=0", None, 422, "greater than or equal to 1"),
        ("get", "/items/nope", None, 404, "unknown item id"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_clear_message(client, method, path, body, status, needle):
    r = client.post(path, json=body) if method == "post" else client.get(path)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_malformed_json_is_a_422(client):
    r = client.post(
        "/recommend", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert "JSON" in r.text


def test_a_new_champion_is_picked_up_without_a_restart(settings_for, tmp_path):
    import mlflow

    from tailor.tracking.registry import promote, register_bundle
    from tailor.tracking.runs import client_for

    settings = settings_for(poll_seconds=0.3)
    with TestClient(create_app(settings), headers=AUTH) as c:
        assert _wait_ready(c)["model_version"] == "1"
        c.post("/items", json={"items": [{"item_id": "fresh", "text": "A Fresh Item"}]})

        # Register the champion's bundle again as version 2 and move the alias to it.
        mlclient = client_for(settings.tracking_uri)
        name = settings.tracking.model_name
        bundle = Path(
            mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path))
        )
        experiment = mlclient.get_experiment_by_name(settings.tracking.experiment).experiment_id
        run = mlclient.create_run(experiment)
        version = register_bundle(
            mlclient, run.info.run_id, bundle / "artifacts" / "bundle", name, {}
        )
        mlclient.set_terminated(run.info.run_id)
        assert version == "2"
        promote(mlclient, name, settings.tracking.champion_alias, version)

        deadline = time.monotonic() + 60
        while c.get("/ready").json()["model_version"] != "2":
            assert time.monotonic() < deadline, "the new champion was not picked up"
            time.sleep(0.2)
        # The item inserted before the switch is still served by the new version.
        found = c.post("/recommend", json={"query": "A Fresh Item", "k": 1}).json()
        assert found["model_version"] == "2"
        assert found["items"][0]["item_id"] == "fresh"
        assert c.post("/admin/reload").json() == {"model_version": "2", "reloaded": False}
        # Put the alias back for the other tests of this module.
        mlclient.set_registered_model_alias(name, settings.tracking.champion_alias, "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_on_a_loopback_port(trained, tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text(
        "\n".join(
            [
                "[data]",
                'source = "synthetic"',
                "[data.synthetic]",
                "n_users = 60",
                "n_items = 80",
                "n_topics = 4",
                "events_per_user = 12",
                "[serve]",
                "poll_seconds = 0",
                'profile_fields = ["interests"]',
                f'write_keys = ["{KEY}"]',
                f'live_url = "sqlite:///{tmp_path / "live.db"}"',
            ]
        )
    )
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    cmd = [sys.executable, "-m", "tailor.cli", "serve", "--config", str(config)]
    cmd += ["--workdir", str(trained), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.3)
        with httpx.Client(base_url=base, timeout=10, headers=AUTH) as http:
            assert http.get("/health").json() == {"status": "ok"}
            http.post("/items", json={"items": [{"item_id": "live-1", "text": "Quantum Llamas"}]})
            r = http.post("/recommend", json={"query": "Quantum Llamas", "k": 2})
            assert r.status_code == 200
            assert r.json()["items"][0]["item_id"] == "live-1"
            assert http.post("/recommend", json={"k": -1}).status_code == 422
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_writes_need_a_key_reads_only_when_configured(settings_for, caplog):
    item = {"items": [{"item_id": "k1", "text": "Keyed Item"}]}
    event = {"events": [{"user_id": "u-new", "item_id": "k1", "kind": "view"}]}
    with TestClient(create_app(settings_for(read_keys=["reader-key-42-0123456789"]))) as c:
        _wait_ready(c)
        for path, body in (("/items", item), ("/events", event), ("/admin/reload", None)):
            r = c.post(path, json=body)
            assert r.status_code == 401 and "X-API-Key" in r.json()["detail"], r.text
            r = c.post(path, json=body, headers={"X-API-Key": "wrong"})
            assert r.status_code == 403, r.text
        assert c.post("/items", json=item, headers=AUTH).status_code == 200
        # Reads: the read key or a write key; nothing else.
        assert c.get("/items/k1").status_code == 401
        assert (
            c.get("/items/k1", headers={"X-API-Key": "reader-key-42-0123456789"}).status_code == 200
        )
        assert c.get("/items/k1", headers=AUTH).status_code == 200
        r = c.post("/recommend", json={"k": 2}, headers={"X-API-Key": "reader-key-4"})
        assert r.status_code == 403
        # The contract says so: a security scheme and 401/403 on every checked endpoint.
        spec = c.get("/openapi.json").json()
        assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
        for path, method in (("/items", "post"), ("/events", "post"), ("/recommend", "post")):
            assert {"401", "403"} <= set(spec["paths"][path][method]["responses"])
    # No write key configured: writes are refused outright, reads stay open.
    with TestClient(create_app(settings_for(write_keys=[]))) as c:
        _wait_ready(c)
        r = c.post("/items", json=item, headers=AUTH)
        assert r.status_code == 403 and "no serve.write_keys" in r.json()["detail"]
        assert c.post("/recommend", json={"k": 2}).status_code == 200
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in logged and "reader-key-42-0123456789" not in logged


def test_event_times_are_bounded_and_chunked_bodies_are_capped(client):
    from datetime import UTC, datetime, timedelta

    def post(when: datetime):
        event = {"user_id": "u-t", "item_id": "i1", "kind": "view", "timestamp": when.isoformat()}
        return client.post("/events", json={"events": [event]})

    now = datetime.now(UTC)
    r = post(now + timedelta(hours=1))
    assert r.status_code == 422 and "in the future" in r.text
    r = post(datetime(1980, 1, 1, tzinfo=UTC))
    assert r.status_code == 422 and "before 1990" in r.text
    # A body with no Content-Length (chunked) is capped like a sized one.
    chunks = iter([b'{"query": "', b"x" * 3000, b"x" * 3000, b'"}'])
    r = client.post("/recommend", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "chunked" in r.text
    small = iter([b'{"k": ', b"3}"])
    r = client.post("/recommend", content=small, headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["items"]) == 3


def test_an_item_given_twice_in_one_request_keeps_the_last_text(client):
    items = [
        {"item_id": "twice", "text": "First Draft"},
        {"item_id": "twice", "text": "Final Text", "label": "Final"},
    ]
    r = client.post("/items", json={"items": items})
    assert r.status_code == 200 and r.json()["inserted"] == ["twice"]
    assert client.get("/items/twice").json()["text"] == "Final Text"


def test_live_items_are_capped_with_a_clear_error(settings_for):
    with TestClient(create_app(settings_for(max_live_items=1)), headers=AUTH) as c:
        _wait_ready(c)
        one = {"items": [{"item_id": "cap-1", "text": "First Live Item"}]}
        assert c.post("/items", json=one).status_code == 200
        two = {"items": [{"item_id": "cap-2", "text": "Second Live Item"}]}
        r = c.post("/items", json=two)
        assert r.status_code == 409 and "serve.max_live_items is 1" in r.json()["detail"]
        assert c.get("/items/cap-2").status_code == 404  # nothing half-added
        # Changing an item already held is not growth.
        again = {"items": [{"item_id": "cap-1", "text": "First Live Item, reworded"}]}
        assert c.post("/items", json=again).json()["updated"] == ["cap-1"]


def test_live_users_beyond_the_bound_are_evicted_and_rebuilt_from_the_log(settings_for):
    settings = settings_for(max_live_users=2)
    items = load_clean(settings).items["item_id"].to_list()
    with TestClient(create_app(settings), headers=AUTH) as c:
        _wait_ready(c)
        state = c.app.state.service.state

        def post(user, item):
            event = {"user_id": user, "item_id": item, "kind": "view"}
            assert c.post("/events", json={"events": [event]}).status_code == 200

        post("lru-a", items[0])
        post("lru-a", items[1])
        post("lru-b", items[2])
        post("lru-c", items[3])  # a third live user: the least recently used (a) goes
        assert "lru-a" not in state.histories and state.evicted == 1
        assert set(state.live_users) == {"lru-b", "lru-c"}
        # Back on a request: rebuilt from the live log, both events, in order.
        r = c.post("/recommend", json={"user_id": "lru-a", "k": 3}).json()
        assert r["basis"] == ["history"]
        assert state.histories["lru-a"] == [items[0], items[1]]
        assert not {i["item_id"] for i in r["items"]} & {items[0], items[1]}
        # b was evicted by a's return; a new event of b restores b whole, once.
        assert "lru-b" not in state.histories
        post("lru-b", items[4])
        assert state.histories["lru-b"] == [items[2], items[4]]
        assert len(state.live_users) == 2


def test_a_full_encoder_queue_is_a_503_with_retry_after(settings_for):
    with TestClient(create_app(settings_for(encoder_queue_texts=2)), headers=AUTH) as c:
        _wait_ready(c)
        queries = c.app.state.service.queries
        queries._pending = 2  # injected: two texts already waiting for the encoder
        r = c.post("/recommend", json={"query": "anything new", "k": 3})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "retry shortly" in r.json()["detail"]
        queries._pending = 0
        assert c.post("/recommend", json={"query": "anything new", "k": 3}).status_code == 200


def test_the_event_loop_searches_with_serve_threads(client, settings_for):
    """OpenMP counts threads per calling thread. The event loop's thread searches faiss; left
    at one thread per core, the idle team spins after each search on the core the language
    model needs, so the app sets the count on that thread itself."""
    import faiss
    import torch

    _wait_ready(client)
    wanted = settings_for().serve.torch_threads
    on_loop = client.portal.call(lambda: (faiss.omp_get_max_threads(), torch.get_num_threads()))
    assert on_loop == (wanted, wanted)


def _burst(client, requests):
    """Item-insert requests that reach the app in one turn of its event loop, through the
    app's own write batcher: their answers (or errors), in order."""
    import asyncio

    svc, inserts = client.app.state.service, client.app.state.inserts

    async def burst():
        submitted = [
            inserts.submit((items, svc.texts.encode([i.text for i in items]))) for items in requests
        ]
        return await asyncio.gather(*submitted, return_exceptions=True)

    return client.portal.call(burst)


def test_inserts_committed_together_serve_what_one_at_a_time_serves(settings_for, tmp_path):
    import numpy as np

    from tailor.data.livelog import LiveItem
    from tailor.serving.recommend import LiveQuery

    known = load_clean(settings_for()).items["item_id"][0]
    requests = [
        [LiveItem(f"burst-{i}", f"Burst Item {i}: a Story of Whales and Storms", f"B{i}")]
        for i in range(6)
    ]
    requests[2] = [*requests[2], LiveItem(known, "A New Text for an Old Item", "Old")]
    requests.append([LiveItem("burst-1", "Burst Item 1, Reworded", "B1 again")])
    with TestClient(create_app(settings_for()), headers=AUTH) as c:
        _wait_ready(c)
        together = _burst(c, requests)
        inserts = c.app.state.inserts
        assert (inserts.batches, inserts.written) == (1, len(requests))  # one commit for all
        batched = c.app.state.service
        logged = LiveLog(batched.settings.live_url).items()
        assert set(logged["item_id"]) == {i.item_id for r in requests for i in r}
        query = LiveQuery(query="whales and storms", k=10)
        got = batched.recommend(query, {query.query: batched.queries.encode([query.query])[0]})

    alone_settings = settings_for(live_url=f"sqlite:///{tmp_path / 'alone.db'}")
    with TestClient(create_app(alone_settings), headers=AUTH) as c:
        _wait_ready(c)
        svc = c.app.state.service
        alone = [svc.upsert_items(r, svc.texts.encode([i.text for i in r])) for r in requests]
        want = svc.recommend(query, {query.query: svc.queries.encode([query.query])[0]})
        assert together == alone
        assert together[2] == (["burst-2"], [known]) and together[-1] == ([], ["burst-1"])
        assert batched.model.position == svc.model.position
        assert batched.model.texts == svc.model.texts and batched.model.labels == svc.model.labels
        rows = np.arange(svc.model.n_items)
        np.testing.assert_allclose(
            batched.model.model.item_vectors(rows), svc.model.model.item_vectors(rows), atol=1e-6
        )
        assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
        assert any(i.item_id.startswith("burst-") for i in got.items)
        np.testing.assert_allclose(
            [i.score for i in got.items], [i.score for i in want.items], atol=1e-6
        )


def test_a_burst_over_the_live_item_cap_refuses_only_the_requests_past_it(settings_for):
    from tailor.data.livelog import LiveItem
    from tailor.serving.service import LiveItemsFullError

    with TestClient(create_app(settings_for(max_live_items=1)), headers=AUTH) as c:
        _wait_ready(c)
        answers = _burst(
            c,
            [
                [LiveItem("cap-a", "First Live Item", "A")],
                [LiveItem("cap-b", "Second Live Item", "B")],
                [LiveItem("cap-a", "First Live Item, Reworded", "A")],
            ],
        )
        assert answers[0] == (["cap-a"], []) and answers[2] == ([], ["cap-a"])
        assert isinstance(answers[1], LiveItemsFullError)
        assert c.get("/items/cap-b").status_code == 404  # nothing half-added
        assert "cap-b" not in set(LiveLog(c.app.state.service.settings.live_url).items()["item_id"])
