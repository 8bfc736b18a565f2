"""Cold items and new users over several draws, and the item-clustered bootstrap."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tailor import columns as C
from tailor.evaluation.draws import (
    FREE_TEXT,
    HISTORY,
    MOST_POPULAR,
    POPULAR_AND_TEXT,
    PROFILE,
    choose_new_users,
    cold_summary,
    draws_markdown,
    new_user_summary,
    run_draw,
    taste_description,
)
from tailor.evaluation.metrics import clustered_bootstrap, paired_bootstrap
from tailor.stages.data import all_interactions
from tailor.stages.evaluate import evaluate_draws, evaluate_models
from tests.conftest import tiny_settings, train_tiny_bundle


def test_clustered_bootstrap_sees_that_every_hit_is_one_item():
    # 10 items with 20 cases each; every hit is on item 0. Resampling cases says "surely above
    # zero"; resampling items knows a draw without item 0 is likely (0.9^10 = 35 %).
    clusters = np.repeat(np.arange(10), 20)
    hits = (clusters == 0).astype(float)
    mean, low, high = clustered_bootstrap(hits, clusters, 2000, seed=0)
    assert mean == pytest.approx(0.1)
    assert low == 0.0 and high > 0.2
    _, case_low, _ = paired_bootstrap(hits, np.zeros_like(hits), 2000, seed=0)
    assert case_low > 0.05
    # Spread evenly over items, the clustered interval is above zero too.
    even = (np.arange(200) % 10 == 0).astype(float)
    _, low, high = clustered_bootstrap(even, clusters, 2000, seed=0)
    assert low > 0.05 and high < 0.15
    # A constant has no spread, and bad shapes are refused.
    assert clustered_bootstrap(np.ones(5), np.arange(5), 100) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="1-D alike"):
        clustered_bootstrap(np.ones(5), np.arange(4))


def test_a_taste_description_names_the_commonest_genres():
    texts = [
        "Toy Story (1995). Genres: Animation, Children's, Comedy.",
        "Fargo (1996). Genres: Crime, Drama, Thriller.",
        "Clerks (1994). Genres: Comedy.",
        "Heat (1995). Genres: Action, Crime, Thriller.",
    ]
    assert taste_description(texts) == "I like Comedy, Crime and Thriller films."
    assert taste_description(texts[2:3]) == "I like Comedy films."
    assert taste_description(["A story without genres."]) is None


def test_new_users_are_a_seeded_share_of_users_with_enough_events():
    events = pl.DataFrame(
        {
            C.USER_ID: ["a"] * 7 + ["b"] * 3 + ["c"] * 7 + ["d"] * 7,
            C.TIMESTAMP: list(range(24)),
            # d's only positives come first: nothing to score after 5 events.
            C.POSITIVE: [True] * 17 + [True] * 5 + [False] * 2,
        }
    )
    picked = choose_new_users(events, 1.0, 5, seed=0)
    assert picked == ["a", "c"]
    assert choose_new_users(events, 0.5, 5, seed=3) == choose_new_users(events, 0.5, 5, seed=3)
    assert choose_new_users(events, 0.0, 5, seed=0) == []


def _genre_items(prepared) -> pl.DataFrame:
    """The synthetic items with their topic written as a genre, so descriptions can be made."""
    items = pl.read_parquet(prepared.items)
    topic = items[C.TEXT].str.extract(r"A (\w+) story", 1)
    return items.with_columns((pl.col(C.TEXT) + " Genres: " + topic + ".").alias(C.TEXT))


def test_a_draw_holds_out_items_and_users_and_is_deterministic(workdir, tmp_path):
    settings = tiny_settings(
        workdir,
        data={"synthetic": {"n_users": 80, "n_items": 60, "n_topics": 3, "events_per_user": 14}},
        eval={"cold_item_share": 0.1, "new_user_share": 0.2},
        serve={"profile_fields": ["interests"]},
    )
    prepared, embedded, _, _ = train_tiny_bundle(settings, tmp_path)
    events = all_interactions(prepared)
    items = _genre_items(prepared)
    users = pl.read_parquet(prepared.users)
    vectors = np.load(embedded.vectors)
    from tailor.serving.encoder import TextVectors

    encode = TextVectors(settings.embed, cache_size=0).encode

    def draw(seed):
        return run_draw(events, items, users, vectors, settings, seed, 2, encode)

    first, again, other = draw(0), draw(0), draw(1)
    assert first.n_cold_items == 6 and first.n_new_users > 0
    # Every cold case's target is a held-out item, and each model has one hit per case.
    assert len(first.cold_targets) > 0
    assert set(first.cold_hits) == {"tailor-seq", "text-cosine"}
    for hits in first.cold_hits.values():
        assert hits.shape == first.cold_targets.shape and set(np.unique(hits)) <= {0.0, 1.0}
    # Same seed, same numbers; another seed holds out other items.
    np.testing.assert_array_equal(first.cold_targets, again.cold_targets)
    for key, values in first.new_users.items():
        np.testing.assert_array_equal(values, again.new_users[key])
    assert set(first.cold_targets.tolist()) != set(other.cold_targets.tolist())
    keys = set(first.new_users)
    for n in (0, 1, 3, 5):
        assert (n, MOST_POPULAR) in keys
    assert {(0, PROFILE), (0, FREE_TEXT), (0, POPULAR_AND_TEXT), (5, HISTORY)} <= keys
    for values in first.new_users.values():
        assert len(values) == first.n_new_users and ((values >= 0) & (values <= 1)).all()

    rows = cold_summary([first, other], 200, 0)
    assert [r["draw"] for r in rows] == ["draw seed 0", "draw seed 1", "pooled (2 draws)"]
    assert rows[-1]["cases"] == rows[0]["cases"] + rows[1]["cases"]
    assert rows[0]["low"] <= rows[0]["tailor-seq"] <= rows[0]["high"]
    users_rows = new_user_summary([first, other], 200, 0)
    five = next(r for r in users_rows if r["events"] == 5 and r["ranking"] == HISTORY)
    assert five["users"] == first.n_new_users + other.n_new_users
    assert five["low"] <= five["gain"] <= five["high"]
    text = draws_markdown([first, other], 20, 200, 0)
    assert "pooled (2 draws)" in text and "most-popular + free text" in text


def test_the_draws_stage_records_per_draw_and_pooled_metrics(workdir, tmp_path):
    settings = tiny_settings(workdir, eval={"draws": 2, "cold_item_share": 0.1})
    prepared, embedded, trained, _ = train_tiny_bundle(settings, tmp_path)
    evaluation = evaluate_models(prepared, embedded.vectors, trained, settings, tmp_path / "e")
    draws = evaluate_draws(
        prepared, embedded.vectors, evaluation, trained, settings, tmp_path / "d", progress=False
    )
    assert [r["draw"] for r in draws.cold][-1] == "pooled (2 draws)"
    metrics = draws.record().metrics
    assert "draws.cold.pooled.tailor_seq" in metrics and "draws.cold.draw_0.low" in metrics
    assert any(k.startswith("draws.new_user.5_events.history") for k in metrics)
    assert draws.table.read_text().startswith("## Cold items and new users over 2 draws")
