"""Data preparation in user partitions gives the files, counts and histories of preparing the
whole file at once: the same rows kept, the same rejects, the same split."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from tailor import columns as C
from tailor.data.livelog import LiveEvent, LiveItem, LiveLog
from tailor.data.protocol import event_histories
from tailor.data.split import SEQ
from tailor.models.sequential import fit_members
from tailor.models.windows import write_windows
from tailor.settings import TrainSettings
from tailor.stages.data import all_histories, load_histories, prepare_data
from tests.conftest import tiny_settings


def _write_files(folder, n_users: int = 150, n_items: int = 90, seed: int = 0) -> dict:
    """A shop's own files, with renamed columns, an extra column, ties in time and defects."""
    rng = np.random.default_rng(seed)
    n = n_users * 40
    users = [f"user-{u}" for u in rng.integers(0, n_users, n)]
    items = [f"sku-{i}" for i in rng.integers(0, n_items, n)]
    # Coarse times, so many of a user's events share one and the split's tie order matters.
    times = [str(t) for t in 1_700_000_000 + 3600 * rng.integers(0, 60, n)]
    stars = [str(w) for w in rng.integers(1, 6, n)]
    for row in rng.choice(n, n // 20, replace=False):
        kind = row % 4
        if kind == 0:
            users[row] = " "
        elif kind == 1:
            times[row] = "yesterday"
        elif kind == 2:
            items[row] = "sku-unknown"
        else:
            stars[row] = "-2"
    events = pl.DataFrame(
        {
            "who": users,
            "what": items,
            "when": times,
            "stars": stars,
            "device": [["web", "app"][i % 2] for i in range(n)],
        }
    )
    events = pl.concat([events, events.slice(10, 25)])  # exact repeats: duplicates
    events.write_csv(folder / "events.csv")
    pl.DataFrame(
        {
            "what": [f"sku-{i}" for i in range(n_items)] + [""],
            "title": [f"Thing {i} of kind {i % 7}" for i in range(n_items)] + ["no id"],
        }
    ).write_parquet(folder / "items.parquet")
    pl.DataFrame(
        {"who": [f"user-{u}" for u in range(n_users)] + ["user-3"], "age": ["30"] * (n_users + 1)}
    ).write_csv(folder / "users.csv")
    return {
        "source": "files",
        "interactions_path": str(folder / "events.csv"),
        "items_path": str(folder / "items.parquet"),
        "users_path": str(folder / "users.csv"),
        "columns": {"user_id": "who", "item_id": "what", "timestamp": "when", "weight": "stars"},
        "text_template": "{title}",
        "positive_min_weight": 3.0,
    }


def _live_log(url: str) -> None:
    log = LiveLog(url)
    log.upsert_items([LiveItem("sku-live", "A live thing", "Live"), LiveItem(" ", "x", "x")])
    when = datetime(2031, 1, 1, tzinfo=UTC)
    log.append_events(
        [
            LiveEvent("user-7", "sku-live", "view", 4.0, when),
            LiveEvent("user-new", "sku-1", "view", 5.0, when),
            LiveEvent("user-new", "sku-2", "view", 5.0, when),
            LiveEvent("user-8", "sku-nope", "click", 1.0, when),
        ]
    )
    log.dispose()


@pytest.fixture
def both(tmp_path):
    data = _write_files(tmp_path)
    url = f"sqlite:///{tmp_path / 'live.db'}"
    _live_log(url)

    def prepare(name: str, **data_overrides):
        settings = tiny_settings(
            tmp_path / name,
            data={**data, **data_overrides},
            serve={"live_url": url},
            tracking={"pseudonym_key": "one key for both"},  # else one per workdir
        )
        return prepare_data(settings, tmp_path / name / "data")

    return prepare("whole"), prepare("parts", partition_events=1_000), prepare


def test_preparing_in_parts_equals_preparing_at_once(both):
    whole, parts, prepare = both
    events = pl.read_parquet(whole.interactions)
    assert events[C.SPLIT].value_counts().height == 3
    key = [C.USER_ID, SEQ]
    assert pl.read_parquet(parts.interactions).sort(key).equals(events.sort(key))
    cold_key = [C.USER_ID, C.TIMESTAMP, C.ITEM_ID]
    whole_cold = pl.read_parquet(whole.cold_events)
    assert whole_cold.height > 0
    assert pl.read_parquet(parts.cold_events).sort(cold_key).equals(whole_cold.sort(cold_key))
    for name in ("items", "users"):
        assert pl.read_parquet(getattr(parts, name)).equals(pl.read_parquet(getattr(whole, name)))
    row = [C.SOURCE, C.REASON, C.ROW]
    for name in ("quarantine", "public_quarantine"):
        got = pl.read_parquet(getattr(parts, name)).sort(row)
        assert got.equals(pl.read_parquet(getattr(whole, name)).sort(row))
    # The report, in its order, and every count.
    assert json.dumps(parts.report) == json.dumps(whole.report)
    assert set(whole.report) == {"interactions", "items", "live_items", "live_events", "users"}
    assert len(whole.report["interactions"]["rejected"]) == 5  # duplicates included
    for field in (
        "n_users",
        "n_items",
        "n_interactions",
        "n_positives",
        "n_cold_items",
        "data_start",
        "data_end",
    ):
        assert getattr(parts, field) == getattr(whole, field), field
    assert "user-new" in pl.read_parquet(parts.interactions)[C.USER_ID].to_list()
    assert not (parts.interactions.parent / "parts").exists()  # no staging left behind

    # What the models see: the same users in the same order, the same cases.
    a, b = load_histories(whole), load_histories(parts)
    assert a.users == b.users
    assert all(np.array_equal(x, y) for x, y in zip(a.train, b.train, strict=True))
    for name in ("valid_users", "valid_targets", "test_users", "test_targets", "cold_targets"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert len(a.cold_targets) > 0

    # A run in parts is another exam than a run at once, and the same exam when repeated.
    assert parts.fingerprint != whole.fingerprint
    assert prepare("parts-again", partition_events=1_000).fingerprint == parts.fingerprint


def test_partitioned_preparation_needs_a_local_file():
    with pytest.raises(ValueError, match="local interactions file"):
        tiny_settings(
            "/tmp/x",
            data={
                "source": "files",
                "interactions_path": "s3://bucket/events.parquet",
                "items_path": "items.parquet",
                "text_template": "{title}",
                "partition_events": 10_000,
            },
        )
    with pytest.raises(ValueError, match=r"needs data\.source='files'"):
        tiny_settings("/tmp/x", data={"partition_events": 10_000})


def test_a_partitioned_run_streams_every_event_to_the_production_fit(both, tmp_path):
    """In user partitions the production fit reads its windows from `all_events` on disk:
    every event of `all_histories`, each user's in the same order, and from them the fit that
    those histories give in the file's user order."""
    whole, parts, _ = both
    assert whole.all_events is None and parts.all_events is not None
    items = pl.read_parquet(parts.items)
    users, histories, liked = all_histories(parts)
    streamed = pl.read_parquet(parts.all_events)
    assert streamed.height == sum(len(h) for h in histories) == parts.n_interactions
    got_users, got_histories, got_liked = event_histories(streamed, items)
    assert got_users == users
    assert all(np.array_equal(a, b) for a, b in zip(got_histories, histories, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(got_liked, liked, strict=True))

    # A fit from the window file is the fit from the same histories in the file's user order.
    by_user = dict(zip(users, zip(histories, liked, strict=True), strict=True))
    in_file = streamed[C.USER_ID].unique(maintain_order=True).to_list()
    assert sorted(in_file) == sorted(users) and in_file != users  # another order: a real test
    ordered = [by_user[u] for u in in_file]
    text = np.random.default_rng(0).normal(size=(items.height, 8)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    # One thread for both fits: `threads = auto` follows the machine's load, and sums reduce in
    # another order on another count.
    train = TrainSettings(
        epochs=2, dim=16, layers=1, heads=2, max_len=6, text_view_weight=0.3, threads=1
    )
    windows = write_windows(parts.all_events, items[C.ITEM_ID].to_list(), 6, tmp_path / "w")
    assert windows.events == streamed.height and windows.users == len(users)
    from_file, losses_file, _, _ = fit_members(text, train, [1, 2], windows)
    in_memory, losses_memory, _, _ = fit_members(
        text, train, [1, 2], [h for h, _ in ordered], [m for _, m in ordered]
    )
    assert losses_file == losses_memory
    np.testing.assert_array_equal(from_file.score(histories[:5]), in_memory.score(histories[:5]))


def test_the_production_stage_of_a_partitioned_run_counts_what_it_trained_on(tmp_path):
    """`train_production` on data prepared in parts: the windows path end to end, with the
    counts the in-memory path reports for the same data, and no window file left behind."""
    from tailor.models.sequential import load_recommender
    from tailor.stages.embed import embed_items
    from tailor.stages.train import train_production, train_recommender

    data = _write_files(tmp_path, n_users=60)
    settings = tiny_settings(
        tmp_path / "work",
        data={**data, "partition_events": 1_000},
        serve={"live_url": f"sqlite:///{tmp_path / 'live.db'}"},
    )
    parts = prepare_data(settings, tmp_path / "work" / "data")
    vectors = embed_items(parts.items, settings, progress=False).vectors
    trained = train_recommender(parts, vectors, settings, tmp_path / "eval", progress=False)
    streamed = train_production(parts, vectors, trained, settings, tmp_path / "a", False)
    in_memory = train_production(
        replace(parts, all_events=None), vectors, trained, settings, tmp_path / "b", False
    )
    fields = ("n_users", "n_events", "n_positives", "n_items_trained", "epochs", "seeds")
    # The same windows, newest only (in the files' user order, so the batches differ).
    for field in (*fields, "windows"):
        assert getattr(streamed, field) == getattr(in_memory, field), field
    assert settings.train.refit_windows == "newest"
    # Warm members on each user's newest window: one window a user, each epoch, each member.
    assert streamed.windows == len(streamed.seeds) * streamed.epochs * streamed.n_users
    assert streamed.n_events == parts.n_interactions
    assert not (tmp_path / "a" / "windows").exists()  # training input, removed after the fit
    model = load_recommender(streamed.model_dir, np.load(vectors))
    assert np.isfinite(model.score([np.array([0, 1, 2])])).all()
