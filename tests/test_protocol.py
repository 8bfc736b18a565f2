"""The evaluation protocol on hand-made data with a known answer."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from tailor import columns as C
from tailor.data.protocol import build_histories, choose_cold_items
from tailor.data.split import split_leave_one_out


def _events(rows):
    return pl.DataFrame(
        {
            C.USER_ID: [r[0] for r in rows],
            C.ITEM_ID: [r[1] for r in rows],
            C.TIMESTAMP: [datetime.fromtimestamp(r[2], UTC) for r in rows],
            C.WEIGHT: [1.0] * len(rows),
        },
        schema_overrides={C.TIMESTAMP: pl.Datetime("us", "UTC")},
    )


def test_cold_items_are_a_seeded_share_of_items_with_events():
    events = _events([("u", f"i{n:02d}", n) for n in range(40)])
    picked = choose_cold_items(events, 0.1, seed=1)
    assert len(picked) == 4 and picked == sorted(picked)
    assert picked == choose_cold_items(events, 0.1, seed=1)
    assert picked != choose_cold_items(events, 0.1, seed=2)
    assert choose_cold_items(events, 0.0, seed=1) == []


def test_histories_known_answer_with_a_cold_item():
    items = pl.DataFrame({C.ITEM_ID: ["a", "b", "c", "d", "e", "new"]})
    # user 1: a(1) b(2) new(3) c(4) d(5) e(6); user 2: new(1) a(2) b(3) c(4)
    rows = [("1", "a", 1), ("1", "b", 2), ("1", "new", 3), ("1", "c", 4), ("1", "d", 5)]
    rows += [("1", "e", 6), ("2", "new", 1), ("2", "a", 2), ("2", "b", 3), ("2", "c", 4)]
    events = _events(rows)
    cold = events.filter(pl.col(C.ITEM_ID) == "new")
    warm = split_leave_one_out(events.filter(pl.col(C.ITEM_ID) != "new"), seed=0)
    hist = build_histories(warm, items, cold)

    assert hist.users == ["1", "2"]
    # warm user 1: a b c d e -> train a b c, valid d, test e; user 2: a b c -> train a
    assert hist.train[0].tolist() == [0, 1, 2] and hist.train[1].tolist() == [0]
    assert hist.valid_targets.tolist() == [3, 1] and hist.test_targets.tolist() == [4, 2]
    assert [h.tolist() for h in hist.test_history()] == [[0, 1, 2, 3], [0, 1]]
    assert [h.tolist() for h in hist.train_and_valid()] == [[0, 1, 2, 3], [0, 1]]
    # cold: user 1 had a, b before "new"; user 2 had nothing before it, so no case
    assert [h.tolist() for h in hist.cold_histories] == [[0, 1]]
    assert hist.cold_targets.tolist() == [5] and hist.cold_items.tolist() == [5]


def test_a_test_case_reads_the_events_between_its_two_targets():
    # Weights 5 2 4 1 5 (positives >= 4): validation target i2 from [i0, i1]; test target i4
    # from [i0, i1, i2, i3], the disliked i3 included as history but never as a target.
    rows = [("u", f"i{n}", n) for n in range(5)]
    events = _events(rows).with_columns(pl.Series(C.WEIGHT, [5.0, 2.0, 4.0, 1.0, 5.0]))
    split = split_leave_one_out(events, seed=0, positive_threshold=4.0)
    items = pl.DataFrame({C.ITEM_ID: [f"i{n}" for n in range(5)]})
    hist = build_histories(split, items)
    assert hist.train[0].tolist() == [0, 1] and hist.train_liked[0].tolist() == [True, False]
    assert hist.valid_targets.tolist() == [2] and hist.test_targets.tolist() == [4]
    assert [h.tolist() for h in hist.test_history()] == [[0, 1, 2, 3]]
    assert hist.train_and_valid_liked()[0].tolist() == [True, False, True, False]
    assert [h.tolist() for h in hist.train_and_valid_positives()] == [[0, 2]]
    assert hist.test_times.tolist() == [datetime.fromtimestamp(4, UTC).replace(tzinfo=None)]
