"""The live service's core (`tailor.serving`) on a trained tiny model: no HTTP, no Prefect."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tailor import columns as C
from tailor.data.livelog import LiveEvent, LiveItem, LiveLog
from tailor.data.load import load_clean
from tailor.models.bundle import Bundle
from tailor.models.sequential import SeqRecommender
from tailor.ranking.rank import RankPolicy
from tailor.serving.live import LiveModel
from tailor.serving.recommend import LiveQuery, live_sequence, recommend
from tailor.serving.state import LiveState, profile_text
from tailor.settings import TrainSettings
from tailor.stages.evaluate import evaluate_cold_start
from tests.conftest import new_workdir, tiny_settings, train_tiny_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template):
    root = tmp_path_factory.mktemp("live")
    work = new_workdir(root, mlflow_template)
    settings = tiny_settings(
        work,
        # The whole budget: 60 synthetic users' validation NDCG@10 moves by more than the
        # early stopping's 5 % band from noise alone, which would stop this fit at epoch 2.
        train={"epochs": 6, "text_view_weight": 0.3, "keep": "last", "patience": None},
        serve={"profile_fields": ["interests"], "profile_neighbours": 10, "profile_prior": 2.0},
    )
    prepared, _, _, folder = train_tiny_bundle(settings, root)
    return settings, prepared, folder


def _state(settings) -> LiveState:
    clean = load_clean(settings)
    return LiveState.from_frames(
        clean.interactions, clean.items, clean.users, settings.serve.profile_fields
    )


def test_added_items_get_the_vectors_of_untrained_items(rng):
    text = rng.normal(size=(12, 8)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    settings = TrainSettings(dim=8, heads=2, layers=1, max_len=5, text_view_weight=0.3)
    histories = [np.array([0, 1, 2, 3]), np.array([4, 5, 6]), np.array([1, 3, 5, 7])] * 4
    model = SeqRecommender(text[:10], settings, seed=0)
    model.fit(histories, seed=0)
    model.net.trained[9] = False  # item 9: known to the catalogue, never seen in training

    before = model.user_vectors(histories[:3])
    model.freeze()
    np.testing.assert_allclose(model.user_vectors(histories[:3]), before, rtol=1e-5, atol=1e-6)
    # One user at a time (a live request) goes through the traced encoder: same numbers.
    for row in range(3):
        single = model.user_vectors([histories[row]])[0]
        np.testing.assert_allclose(single, before[row], rtol=1e-5, atol=1e-6)
    positions = model.add_items(np.stack([text[9], text[11]]))
    assert positions.tolist() == [10, 11]
    vectors = model.item_vectors()
    # A new item is scored exactly like an untrained one with the same text...
    np.testing.assert_allclose(vectors[10], vectors[9], rtol=1e-5, atol=1e-6)
    # ...adding items does not move any user (the text view's normaliser covers trained items).
    np.testing.assert_allclose(model.user_vectors(histories[:3]), before, rtol=1e-5, atol=1e-6)
    # A session may contain the new items.
    assert np.isfinite(model.user_vectors([np.array([0, 10, 11])])).all()
    # Updating a trained item's text keeps its id part: the vector moves by the text part only.
    old = vectors[0].copy()
    model.update_item_texts(np.array([0]), text[11:12])
    assert not np.allclose(model.item_vectors(np.array([0]))[0], old)


def test_query_only_request_is_a_text_search(trained, encoder):
    settings, _prepared, folder = trained
    live = LiveModel(Bundle(folder), "1", settings)
    state = _state(settings)
    target = live.texts[5]
    vectors = {target: encoder.encode([target])[0]}
    result = recommend(live, state, LiveQuery(query=target, k=3), vectors)
    assert result.basis == ["query"]
    assert result.items[0].item_id == live.item_ids[5]


def test_history_items_and_exclusions_never_come_back(trained):
    settings, _prepared, folder = trained
    live = LiveModel(Bundle(folder), "1", settings)
    state = _state(settings)
    user = next(iter(state.histories))
    seen = set(state.histories[user])
    extra = [i for i in live.item_ids if i not in seen][:3]
    result = recommend(
        live, state, LiveQuery(user_id=user, session=extra[:1], exclude=extra[1:], k=30), {}
    )
    got = {i.item_id for i in result.items}
    assert len(got) == 30
    assert not got & (seen | set(extra))
    assert result.basis == ["history", "session"]


def test_inserted_item_is_found_by_the_users_it_reads_like(trained, encoder):
    settings, _prepared, folder = trained
    live = LiveModel(Bundle(folder), "1", settings)
    state = _state(settings)
    user = next(iter(state.histories))
    last = state.histories[user][-1]
    # A copy of the user's latest item, under a new id: its text view puts it near them.
    text = live.texts[live.position[last]]
    inserted, updated = live.upsert_items([("copy", text, "Copy")], encoder.encode([text]))
    assert inserted == ["copy"] and updated == []
    result = recommend(live, state, LiveQuery(user_id=user, k=live.n_items), {})
    ranked = [i.item_id for i in result.items]
    # Every unseen item is listed (k = the catalogue), so what counts is where the copy lands:
    # among the first quarter, by its text alone.
    assert ranked.index("copy") < len(ranked) // 4
    entry = result.items[ranked.index("copy")]
    assert entry.new and entry.reason.startswith("new: ")


def test_profile_neighbours_beat_popularity_when_profiles_carry_taste(trained):
    # Synthetic users' "interests" name the topics they watch: a profile is real signal here,
    # so borrowing from similar profiles must find more of their held-out items than
    # most-popular does. Inserted cold items must score exactly as the bundled ones.
    settings, prepared, folder = trained
    result = evaluate_cold_start(prepared, folder, settings, folder.parent / "cold_start")
    m = result.metrics
    assert m["new_user_recall_at_20"] > m["new_user_popular_recall_at_20"]
    # Not 0 == 0: the held-out items are found (0.75 here), and re-encoding their text through
    # the service's encoder and inserting them loses none of it.
    assert m["bundle_cold_recall_at_20"] > 0.3
    assert m["inserted_cold_recall_at_20"] == pytest.approx(m["bundle_cold_recall_at_20"], abs=1e-9)
    assert "New users" in result.table.read_text()


def test_profile_text_reads_only_the_configured_fields():
    profile = {"age": 24, "gender": "F", "occupation": " student ", "zip": "123"}
    assert profile_text(profile, ["age", "occupation"]) == "age: 24; occupation: student"
    assert profile_text({"age": ""}, ["age"]) == ""


def test_live_log_round_trip_and_nightly_merge(settings, tmp_path):
    from datetime import UTC, datetime

    url = f"sqlite:///{tmp_path / 'live.db'}"
    log = LiveLog(url)
    assert not log.exists() and log.items().is_empty() and log.events().is_empty()
    assert not (tmp_path / "live.db").exists()  # reading never creates the file
    clean = load_clean(settings)
    item = clean.items[C.ITEM_ID][0]
    log.upsert_items([LiveItem("brand-new", "A Brand New Thing", "Brand New")])
    log.upsert_items([LiveItem(item, "Rewritten text", "Rewritten")])
    when = datetime(2030, 1, 1, tzinfo=UTC)
    log.append_events(
        [
            LiveEvent("u-live", "brand-new", "view", 1.0, when),
            LiveEvent("u-live", "no-such-item", "click", 1.0, when),
        ]
    )
    assert log.events()["kind"].to_list() == ["view", "click"]
    log.dispose()

    merged = load_clean(
        settings.model_copy(update={"serve": settings.serve.model_copy(update={"live_url": url})})
    )
    assert merged.items.height == clean.items.height + 1
    row = merged.items.filter(merged.items[C.ITEM_ID] == item).row(0, named=True)
    assert (row[C.TEXT], row[C.LABEL]) == ("Rewritten text", "Rewritten")
    live = merged.interactions.filter(merged.interactions[C.USER_ID] == "u-live")
    assert live[C.ITEM_ID].to_list() == ["brand-new"]
    # The event on an unknown item is quarantined and counted, not lost or fatal.
    assert merged.report["live_events"]["rejected"] == {"unknown item": 1}
    assert merged.quarantine.filter(merged.quarantine[C.REASON] == "unknown item").height >= 1


def test_nightly_refresh_can_recommend_items_newer_than_the_model(trained):
    import polars as pl

    from tailor.serving.batch import add_new_items, compute_recommendations

    settings, prepared, folder = trained
    bundle = Bundle(folder)
    interactions = pl.read_parquet(prepared.interactions)
    user = interactions[C.USER_ID][0]
    last = interactions.filter(pl.col(C.USER_ID) == user)[C.ITEM_ID][-1]
    text = bundle.items.filter(pl.col(C.ITEM_ID) == last)[C.TEXT][0]
    items = pl.read_parquet(prepared.items).select(C.ITEM_ID, C.TEXT, C.LABEL)
    items = pl.concat(
        [items, pl.DataFrame({C.ITEM_ID: ["tonight"], C.TEXT: [text], C.LABEL: ["T"]})]
    )

    assert add_new_items(bundle, items, settings.cache_dir) == 1
    assert add_new_items(bundle, items, settings.cache_dir) == 0  # already there
    assert bundle.index.ntotal == bundle.n_items == len(items)
    recs = compute_recommendations(bundle, interactions, RankPolicy(bundle.n_items))
    mine = recs.filter(pl.col(C.USER_ID) == user)
    assert "tonight" in mine[C.ITEM_ID].to_list()


def test_a_full_encoder_queue_refuses_instead_of_growing(settings):
    import threading

    from tailor.serving.encoder import EncoderBusyError, TextVectors

    texts = TextVectors(settings.embed, cache_size=0, max_pending=4)
    release = threading.Event()
    real = texts.encoder.encode

    def stuck(batch):  # an encoder that hangs until released: the injected fault
        release.wait(timeout=60)
        return real(batch)

    texts.encoder.encode = stuck
    first = texts.submit(["a", "b"])
    second = texts.submit(["c", "d"])  # 4 waiting: the limit
    with pytest.raises(EncoderBusyError, match="4 texts waiting"):
        texts.submit(["e"])
    release.set()
    assert first.result(timeout=60).shape == (2, texts.dim)
    assert second.result(timeout=60).shape == (2, texts.dim)
    assert texts.submit(["e"]).result(timeout=60).shape == (1, texts.dim)  # room again


def test_batched_user_vectors_give_the_single_request_lists(trained):
    """Concurrent requests share the user encoder's passes; each gets the top-k and scores
    the one-request path gives."""
    settings, _prepared, folder = trained
    live = LiveModel(Bundle(folder), "1", settings)
    state = _state(settings)
    users = list(state.histories)[:12]
    queries = [
        LiveQuery(user_id=u, session=live.item_ids[i : i + 3] if i % 2 else [], k=10)
        for i, u in enumerate(users)
    ]
    single = [recommend(live, state, q, {}) for q in queries]
    positions = [live_sequence(live, state, q).positions for q in queries]

    async def together():
        futures = [live.users.submit(p) for p in positions]  # one turn of the loop
        return await asyncio.gather(*futures)

    vectors = asyncio.run(together())
    assert (live.users.passes, live.users.encoded) == (1, len(queries))
    for q, p, v, alone in zip(queries, positions, vectors, single, strict=True):
        batched = recommend(live, state, q, {}, user_vector=(p, v))
        assert [i.item_id for i in batched.items] == [i.item_id for i in alone.items]
        np.testing.assert_allclose(
            [i.score for i in batched.items], [i.score for i in alone.items], rtol=1e-5, atol=1e-6
        )
    # A vector computed for other positions (the state moved on meanwhile) is not used.
    stale = recommend(live, state, queries[0], {}, user_vector=([0], vectors[0] + 100.0))
    assert [i.score for i in stale.items] == [i.score for i in single[0].items]


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_batched_and_cached_query_vectors_give_the_single_request_lists(trained, int8):
    """Queries that wait for the language model share its next pass (ONNX Runtime, the
    serving default; float or int8, the query default), and a repeated query comes from the
    cache: each gets the top-k and scores the one-request path gives."""
    import threading

    from tailor.serving.encoder import TextVectors

    settings, _prepared, folder = trained
    live = LiveModel(Bundle(folder), "1", settings)
    state = _state(settings)
    queries = [live.texts[i][:40] for i in (1, 4, 7)] + ["a heist in paris", "space robots"]

    def text_vectors() -> TextVectors:
        return TextVectors(settings.embed, backend="onnx", cache_dir=settings.cache_dir, int8=int8)

    alone = text_vectors()
    assert alone.backend == "onnx"
    single = {q: alone.encode([q])[0] for q in queries}  # one pass per query

    texts = text_vectors()
    passes: list[int] = []
    running, release = threading.Event(), threading.Event()
    real = texts.encoder.encode

    def held(batch):  # the first pass waits, so the other queries queue behind it
        running.set()
        release.wait(timeout=60)
        passes.append(len(batch))
        return real(batch)

    texts.encoder.encode = held
    first = texts.submit([queries[0]])
    assert running.wait(timeout=60)
    waiting = [texts.submit([q]) for q in queries[1:]]
    release.set()
    batched = {queries[0]: first.result(timeout=120)[0]}
    batched |= {q: f.result(timeout=120)[0] for q, f in zip(queries[1:], waiting, strict=True)}
    assert passes == [1, len(queries) - 1]  # the four that waited shared one pass
    cached = {}
    for q in queries:
        hit = texts.submit([q])
        assert hit.done()  # from the cache: no pass
        cached[q] = hit.result()[0]
    assert passes == [1, len(queries) - 1]

    for q in queries:
        expected = recommend(live, state, LiveQuery(query=q, k=10), {q: single[q]})
        for vectors in (batched, cached):
            got = recommend(live, state, LiveQuery(query=q, k=10), {q: vectors[q]})
            assert [i.item_id for i in got.items] == [i.item_id for i in expected.items]
            np.testing.assert_allclose(
                [i.score for i in got.items],
                [i.score for i in expected.items],
                rtol=1e-5,
                atol=1e-5,
            )


def test_user_vector_batches_are_bounded_and_errors_reach_every_request():
    from tailor.serving.batching import UserVectorBatcher

    passes = []

    def encode(seqs):
        passes.append(len(seqs))
        return np.array([[float(sum(s))] for s in seqs])

    batcher = UserVectorBatcher(encode, max_batch=2)

    async def five():
        return await asyncio.gather(*(batcher.submit([i, i]) for i in range(5)))

    assert [float(v[0]) for v in asyncio.run(five())] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert passes == [2, 2, 1]

    def broken(seqs):
        raise RuntimeError("encoder down")

    failing = UserVectorBatcher(broken)

    async def two():
        return await asyncio.gather(
            *(failing.submit([1]) for _ in range(2)), return_exceptions=True
        )

    errors = asyncio.run(two())
    assert [str(e) for e in errors] == ["encoder down", "encoder down"]
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        UserVectorBatcher(encode, max_batch=0)


def test_writes_arriving_during_a_commit_share_the_next_one():
    from tailor.serving.batching import WriteBatcher

    commits: list[list[int]] = []

    async def write(batch):
        commits.append(batch)
        await asyncio.sleep(0.01)  # a commit in flight: later writes queue up
        return [ValueError(f"odd {p}") if p % 7 == 0 else p * 10 for p in batch]

    batcher = WriteBatcher(write, max_batch=3)

    async def burst():
        first = [batcher.submit(p) for p in range(2)]  # one turn: the first commit
        await asyncio.sleep(0.001)
        later = [batcher.submit(p) for p in range(2, 9)]  # during it: the next ones
        return await asyncio.gather(*first, *later, return_exceptions=True)

    results = asyncio.run(burst())
    assert commits == [[0, 1], [2, 3, 4], [5, 6, 7], [8]]  # in order, at most 3 each
    assert [str(r) if isinstance(r, Exception) else r for r in results] == [
        "odd 0", 10, 20, 30, 40, 50, 60, "odd 7", 80,
    ]  # fmt: skip
    assert (batcher.batches, batcher.written) == (4, 9)

    async def down(batch):
        raise OSError("log unreachable")

    failing = WriteBatcher(down)

    async def two():
        return await asyncio.gather(failing.submit(1), failing.submit(2), return_exceptions=True)

    assert [str(e) for e in asyncio.run(two())] == ["log unreachable"] * 2
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        WriteBatcher(write, max_batch=0)
