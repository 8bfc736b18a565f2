from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import polars as pl
import pytest

from tailor import columns as C
from tailor.data.clean import (
    DUPLICATE_ITEM_ID,
    DUPLICATE_ROW,
    DUPLICATE_USER_ID,
    EMPTY_TEXT,
    INVALID_WEIGHT,
    MISSING_ITEM_ID,
    MISSING_USER_ID,
    NO_VECTOR,
    UNKNOWN_ITEM,
    UNPARSEABLE_TIMESTAMP,
    clean_all,
    clean_interactions,
    clean_items,
    clean_users,
    parse_timestamps,
    summarize_quarantine,
)
from tailor.data.sources import DataError, RawData


def _text(**cols: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame(cols, schema={name: pl.Utf8 for name in cols})


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


ITEMS = _text(
    item_id=[" a ", "b", "", None, "a", "c", "d"],
    title=["Alpha", "Beta", "Nameless", "Ghost", "Alpha again", None, "Delta"],
    year=["1999", None, "2000", "2001", "2002", None, "2003"],
)

INTERACTIONS = _text(
    user_id=["u1", "u1", "u1", "u1", None, "u2", "u2", "u2", "u2", "u2", "u2", "u3", " "],
    item_id=["a", "b", "a", "zzz", "a", "a", "b", "d", "b", "a", None, "d", "a"],
    timestamp=[
        "300",
        "100",
        "300.0",  # same instant as row 0 and same weight: a duplicate
        "400",
        "100",
        "2020-01-01T00:00:00Z",
        "yesterday",
        "2020-01-01",
        "2020-01-01T00:00:05+01:00",
        "2020-01-01T00:00:00Z",
        "100",
        "100",
        "100",
    ],
    weight=["4", "5", "4", "3", "1", "2", "1", "-1", "nan", "2.5", "1", "", "1"],
)


def test_clean_items_reasons_and_kept_rows() -> None:
    clean, quarantine = clean_items(ITEMS, "items.csv", "{title} ({year})", "{title}")
    assert clean.columns == [C.ITEM_ID, C.TEXT, C.LABEL, "title", "year"]
    assert clean.get_column(C.ITEM_ID).to_list() == ["a", "b", "d"]
    assert clean.get_column(C.TEXT).to_list() == ["Alpha (1999)", "Beta", "Delta (2003)"]
    assert clean.get_column(C.LABEL).to_list() == ["Alpha", "Beta", "Delta"]
    reasons = quarantine.get_column(C.REASON).to_list()
    assert sorted(reasons) == sorted(
        [MISSING_ITEM_ID, MISSING_ITEM_ID, DUPLICATE_ITEM_ID, EMPTY_TEXT]
    )
    assert set(quarantine.get_column(C.SOURCE)) == {"items.csv"}
    # The original row, unstripped, exactly as it arrived.
    rows = [json.loads(r) for r in quarantine.get_column(C.ROW)]
    assert {"item_id": "a", "title": "Alpha again", "year": "2002"} in rows
    assert {"item_id": None, "title": "Ghost", "year": "2001"} in rows


def test_clean_items_keeps_the_first_valid_duplicate() -> None:
    items = _text(item_id=["x", "x", "x"], title=[None, "Second", "Third"])
    clean, quarantine = clean_items(items, "items.csv", "{title}", "{title}")
    assert clean.get_column(C.TEXT).to_list() == ["Second"]
    assert sorted(quarantine.get_column(C.REASON)) == [DUPLICATE_ITEM_ID, EMPTY_TEXT]


def test_clean_items_label_falls_back_to_id() -> None:
    items = _text(item_id=["x"], title=[None], about=["words"])
    clean, _ = clean_items(items, "items.csv", "{about}", "{title}")
    assert clean.get_column(C.LABEL).to_list() == ["x"]


def test_clean_items_with_vectors() -> None:
    items = _text(item_id=["a", "b", "c"], title=["Alpha", "Beta", "Gamma"], about=["x", None, ""])
    vectors = pl.DataFrame(
        {C.ITEM_ID: ["a", "b", "zz"], C.VECTOR: [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]}
    )
    clean, quarantine = clean_items(items, "items.csv", "{about}", "{title}", item_vectors=vectors)
    assert clean.get_column(C.ITEM_ID).to_list() == ["a", "b"]
    # With a vector the text is for people only; an empty one becomes the label.
    assert clean.get_column(C.TEXT).to_list() == ["x", "Beta"]
    assert quarantine.get_column(C.REASON).to_list() == [NO_VECTOR]
    assert json.loads(quarantine.get_column(C.ROW)[0])[C.ITEM_ID] == "c"


def test_clean_items_vectors_need_their_columns() -> None:
    with pytest.raises(DataError, match="'vector'"):
        clean_items(ITEMS, "items.csv", "{title}", "{title}", pl.DataFrame({C.ITEM_ID: ["a"]}))


def test_clean_interactions_every_reason_counted(caplog: pytest.LogCaptureFixture) -> None:
    known = pl.Series(["a", "b", "c", "d"])
    with caplog.at_level(logging.INFO, logger="tailor.data.clean"):
        clean, quarantine = clean_interactions(INTERACTIONS, "events.csv", known, None)
    counts = dict(quarantine.group_by(C.REASON).len().iter_rows())
    assert counts == {
        MISSING_USER_ID: 2,
        MISSING_ITEM_ID: 1,
        UNPARSEABLE_TIMESTAMP: 1,
        INVALID_WEIGHT: 3,
        UNKNOWN_ITEM: 1,
        DUPLICATE_ROW: 1,
    }
    assert clean.height + quarantine.height == INTERACTIONS.height
    assert "invalid weight: 3" in caplog.text

    assert clean.schema[C.TIMESTAMP] == pl.Datetime("us", "UTC")
    assert clean.schema[C.WEIGHT] == pl.Float64
    assert clean.select(C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.WEIGHT).rows() == [
        ("u1", "b", _utc(1970, 1, 1, 0, 1, 40), 5.0),
        ("u1", "a", _utc(1970, 1, 1, 0, 5), 4.0),
        ("u2", "a", _utc(2020, 1, 1), 2.0),
        ("u2", "a", _utc(2020, 1, 1), 2.5),
    ]
    bad_time = quarantine.filter(pl.col(C.REASON) == UNPARSEABLE_TIMESTAMP)
    assert json.loads(bad_time.get_column(C.ROW)[0]) == {
        C.USER_ID: "u2",
        C.ITEM_ID: "b",
        C.TIMESTAMP: "yesterday",
        C.WEIGHT: "1",
    }


def test_clean_interactions_without_weight_and_with_extras() -> None:
    events = _text(user_id=["u1", "u1"], item_id=["a", "a"], timestamp=["2", "1"], event=["v", "c"])
    clean, quarantine = clean_interactions(events, "e.csv", pl.Series(["a"]), None)
    assert clean.columns == [C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.WEIGHT, "event"]
    assert clean.get_column(C.WEIGHT).to_list() == [1.0, 1.0]
    # Sorted by time within the user.
    assert clean.get_column("event").to_list() == ["c", "v"]
    assert quarantine.height == 0


def test_timestamps_in_three_formats() -> None:
    parsed = parse_timestamps(
        pl.Series(
            [
                "86400",
                " 86400.25 ",
                "2021-03-04",
                "2021-03-04 05:06:07",
                "2021-03-04T05:06:07.5Z",
                "2021-03-04T05:06:07+02:00",
                "20210304T050607",
                "1e20",
                "inf",
                "",
                None,
                "March 4th",
            ]
        )
    )
    assert parsed.dtype == pl.Datetime("us", "UTC")
    assert parsed.to_list() == [
        _utc(1970, 1, 2),
        _utc(1970, 1, 2, 0, 0, 0, 250_000),
        _utc(2021, 3, 4),
        _utc(2021, 3, 4, 5, 6, 7),
        _utc(2021, 3, 4, 5, 6, 7, 500_000),
        _utc(2021, 3, 4, 3, 6, 7),
        _utc(2021, 3, 4, 5, 6, 7),
        None,
        None,
        None,
        None,
        None,
    ]


def test_timestamps_with_a_strptime_format() -> None:
    parsed = parse_timestamps(
        pl.Series(["04/03/2021 05:06", "2021-03-04", "31/02/2021 00:00"]), "%d/%m/%Y %H:%M"
    )
    assert parsed.to_list() == [_utc(2021, 3, 4, 5, 6), None, None]


def test_zero_valid_interactions_names_the_file_and_reason() -> None:
    events = _text(user_id=["u1", "u2"], item_id=["a", "a"], timestamp=["soon", "later"])
    with pytest.raises(DataError) as err:
        clean_interactions(events, "/data/events.csv", pl.Series(["a"]), None)
    message = str(err.value)
    assert "/data/events.csv" in message
    assert f"{UNPARSEABLE_TIMESTAMP}: 2" in message
    assert "data.timestamp_format" in message


def test_zero_valid_items_names_the_file() -> None:
    with pytest.raises(
        DataError, match=r"items file /data/items\.csv has no valid rows.*empty text"
    ):
        clean_items(_text(item_id=["a"], title=[None]), "/data/items.csv", "{title}", "{title}")


def test_missing_required_column_names_file_and_column() -> None:
    events = _text(user_id=["u1"], item_id=["a"])
    with pytest.raises(DataError, match=r"interactions file ev\.csv has no column 'timestamp'"):
        clean_interactions(events, "ev.csv", pl.Series(["a"]), None)


def test_clean_users_missing_and_duplicate() -> None:
    users = _text(user_id=["u2", " u1", "u1", None], age=["30", "40", "50", "60"])
    clean, quarantine = clean_users(users, "users.csv")
    assert clean.rows() == [("u1", "40"), ("u2", "30")]
    assert sorted(quarantine.get_column(C.REASON)) == [DUPLICATE_USER_ID, MISSING_USER_ID]


def test_clean_all_report_balances() -> None:
    raw = RawData(
        interactions=INTERACTIONS,
        items=ITEMS,
        users=_text(user_id=["u1", "u1"], age=["1", "2"]),
        sources={"interactions": "events.csv", "items": "items.csv", "users": "users.csv"},
        text_template="{title} ({year})",
        label_template="{title}",
    )
    clean = clean_all(raw)
    assert set(clean.report) == {"interactions", "items", "users"}
    for entry in clean.report.values():
        assert entry["rows_in"] == entry["rows_out"] + sum(entry["rejected"].values())
    assert clean.report["items"] == {
        "file": "items.csv",
        "rows_in": 7,
        "rows_out": 3,
        "rejected": {MISSING_ITEM_ID: 2, DUPLICATE_ITEM_ID: 1, EMPTY_TEXT: 1},
    }
    assert clean.report["interactions"]["rejected"][UNKNOWN_ITEM] == 1
    assert clean.quarantine.height == sum(
        sum(e["rejected"].values()) for e in clean.report.values()
    )
    assert clean.quarantine.schema == {C.SOURCE: pl.Utf8, C.REASON: pl.Utf8, C.ROW: pl.Utf8}
    summary = summarize_quarantine(clean.quarantine)
    assert summary.row(0) == ("events.csv", INVALID_WEIGHT, 3)


def test_live_items_pass_the_source_rules_and_are_counted() -> None:
    raw = RawData(
        interactions=_text(user_id=["u1"], item_id=["a"], timestamp=["100"], weight=["1"]),
        items=_text(item_id=["a", "b"], title=["Alpha", "Beta"]),
        users=None,
        sources={"interactions": "events.csv", "items": "items.csv"},
        text_template="{title}",
        label_template="{title}",
    )
    live = _text(
        item_id=["n1", "  ", "n2", "b", "n1"],
        text=["New One", "No Id", "   ", "Beta Reworded", "New One, v2"],
        label=["N1", None, "N2", None, None],
    )
    clean = clean_all(raw, live_items=live)
    entry = clean.report["live_items"]
    assert entry == {
        "file": "live log (items)",
        "rows_in": 5,
        "rows_out": 3,
        "rejected": {EMPTY_TEXT: 1, MISSING_ITEM_ID: 1},
    }
    rejected = clean.quarantine.filter(pl.col(C.SOURCE) == "live log (items)")
    assert sorted(rejected[C.REASON].to_list()) == [EMPTY_TEXT, MISSING_ITEM_ID]
    items = {r[C.ITEM_ID]: r for r in clean.items.iter_rows(named=True)}
    assert set(items) == {"a", "b", "n1"}  # n2 (blank text) is not published
    assert items["n1"][C.TEXT] == "New One, v2" and items["n1"][C.LABEL] == "n1"
    assert items["b"][C.TEXT] == "Beta Reworded"


def test_a_text_of_punctuation_only_is_empty() -> None:
    # Every field of "{title}. {description}" empty renders as ".": nothing to read.
    items = _text(
        item_id=["a", "b", "c"],
        title=["Alpha", None, "\u00c9t\u00e9"],
        description=[None, "", None],
    )
    clean, quarantine = clean_items(items, "items.csv", "{title}. {description}", "{title}")
    assert clean[C.ITEM_ID].to_list() == ["a", "c"]
    assert quarantine[C.REASON].to_list() == [EMPTY_TEXT]
