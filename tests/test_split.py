from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from tailor import columns as C
from tailor.data.split import SEQ, split_leave_one_out


def _events(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            C.USER_ID: [u for u, _, _ in rows],
            C.ITEM_ID: [i for _, i, _ in rows],
            C.TIMESTAMP: [datetime.fromtimestamp(t, UTC) for _, _, t in rows],
            C.WEIGHT: [1.0] * len(rows),
        },
        schema_overrides={C.TIMESTAMP: pl.Datetime("us", "UTC")},
    )


ROWS = [
    ("u2", "x", 50),
    ("u1", "c", 30),
    ("u1", "a", 10),
    ("u3", "p", 5),
    ("u1", "d", 40),
    ("u2", "y", 20),
    ("u1", "b", 20),
    ("u3", "q", 6),
    ("u3", "r", 7),
]


def test_split_known_answer() -> None:
    out = split_leave_one_out(_events(ROWS), seed=0)
    assert out.columns == [C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.WEIGHT, C.SPLIT, SEQ, C.POSITIVE]
    assert out.schema[SEQ] == pl.Int64
    assert out.select(C.USER_ID, C.ITEM_ID, C.SPLIT, SEQ).rows() == [
        ("u1", "a", C.TRAIN, 0),
        ("u1", "b", C.TRAIN, 1),
        ("u1", "c", C.VALID, 2),
        ("u1", "d", C.TEST, 3),
        ("u2", "y", C.TRAIN, 0),
        ("u2", "x", C.TRAIN, 1),
        ("u3", "p", C.TRAIN, 0),
        ("u3", "q", C.VALID, 1),
        ("u3", "r", C.TEST, 2),
    ]


def test_split_does_not_depend_on_input_order() -> None:
    events = _events([*ROWS, ("u4", "m", 1), ("u4", "n", 1), ("u4", "o", 1), ("u4", "k", 1)])
    first = split_leave_one_out(events, seed=3)
    for shuffle_seed in range(5):
        shuffled = events.sample(fraction=1.0, shuffle=True, seed=shuffle_seed)
        assert split_leave_one_out(shuffled, seed=3).equals(first)


def test_split_ties_are_broken_by_seed_not_id() -> None:
    # "a" is seen first; "b" and "c" share the last timestamp, so either may be the test event.
    events = _events([("u1", "a", 1), ("u1", "c", 2), ("u1", "b", 2)])
    tests = {}
    for seed in range(40):
        out = split_leave_one_out(events, seed=seed)
        assert out.get_column(C.ITEM_ID)[0] == "a"
        tests[seed] = out.filter(pl.col(C.SPLIT) == C.TEST).get_column(C.ITEM_ID).item()
        again = split_leave_one_out(events, seed=seed)
        assert again.equals(out)
    assert set(tests.values()) == {"b", "c"}


def test_split_users_with_fewer_than_three_events_are_all_train() -> None:
    events = _events([("u1", "a", 1), ("u1", "b", 2), ("u2", "c", 3)])
    out = split_leave_one_out(events, seed=1)
    assert out.get_column(C.SPLIT).to_list() == [C.TRAIN, C.TRAIN, C.TRAIN]
    assert out.get_column(SEQ).to_list() == [0, 1, 0]


def test_split_one_test_and_one_valid_per_eligible_user() -> None:
    rows = [(f"u{u}", f"i{(u * 7 + k) % 13}", k // 2) for u in range(30) for k in range(3 + u % 5)]
    out = split_leave_one_out(_events(rows), seed=9)
    per_user = out.group_by(C.USER_ID).agg(
        (pl.col(C.SPLIT) == C.TEST).sum().alias("test"),
        (pl.col(C.SPLIT) == C.VALID).sum().alias("valid"),
        (pl.col(SEQ) == pl.int_range(pl.len())).all().alias("seq_ok"),
        (pl.col(C.TIMESTAMP).diff().dt.total_seconds().fill_null(0) >= 0).all().alias("timed"),
    )
    assert per_user.height == 30
    assert per_user.get_column("test").to_list() == [1] * 30
    assert per_user.get_column("valid").to_list() == [1] * 30
    assert per_user.get_column("seq_ok").all()
    assert per_user.get_column("timed").all()


def test_split_names_a_missing_column() -> None:
    with pytest.raises(ValueError, match="'timestamp'"):
        split_leave_one_out(pl.DataFrame({C.USER_ID: ["u1"], C.ITEM_ID: ["a"]}), seed=0)


def test_targets_are_the_last_two_positives_and_the_rest_is_history() -> None:
    # Weights 5 2 4 1 5 2 with positives >= 4: test = the last 5 (seq 4), validation = the 4
    # (seq 2); the 1 between them is the test case's history, the 2 after the test target is
    # never scored. Without a threshold the same user splits the classic way.
    events = pl.DataFrame(
        {
            C.USER_ID: ["a"] * 6 + ["b"] * 3,
            C.ITEM_ID: [f"i{n}" for n in range(9)],
            C.TIMESTAMP: list(range(9)),
            C.WEIGHT: [5.0, 2.0, 4.0, 1.0, 5.0, 2.0, 5.0, 2.0, 5.0],
        }
    )
    out = split_leave_one_out(events, seed=0, positive_threshold=4.0)
    a = out.filter(pl.col(C.USER_ID) == "a")
    assert a[C.SPLIT].to_list() == ["train", "train", "valid", "valid", "test", "test"]
    assert a[C.POSITIVE].to_list() == [True, False, True, False, True, False]
    # User b has two positives but nothing before the first: not held out.
    assert set(out.filter(pl.col(C.USER_ID) == "b")[C.SPLIT]) == {"train"}
    classic = split_leave_one_out(events, seed=0)
    assert classic.filter(pl.col(C.USER_ID) == "a")[C.SPLIT].to_list()[-2:] == ["valid", "test"]
    assert classic[C.POSITIVE].all()


def test_a_users_split_depends_on_that_users_events_only() -> None:
    # Many ties (three timestamps per user), so the tie order decides most targets.
    rows = [(f"u{u}", f"i{(u * 7 + j) % 13}", 100 + j // 3) for u in range(30) for j in range(9)]
    events = _events(rows)
    whole = split_leave_one_out(events, seed=5)
    some = [f"u{u}" for u in range(0, 30, 3)]
    alone = split_leave_one_out(events.filter(pl.col(C.USER_ID).is_in(some)), seed=5)
    assert alone.equals(whole.filter(pl.col(C.USER_ID).is_in(some)))
    # ...and the seed still matters on that data.
    other = split_leave_one_out(events, seed=6)
    assert not other.get_column(C.ITEM_ID).equals(whole.get_column(C.ITEM_ID))
