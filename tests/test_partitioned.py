"""Cleaning in user partitions gives exactly what cleaning the whole file gives."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tailor import columns as C
from tailor.data.clean import clean_interactions
from tailor.data.partitioned import clean_interactions_partitioned, partition_by_user
from tailor.data.sources import DataError, read_table


def _raw_events(n: int, seed: int = 0) -> tuple[pl.DataFrame, pl.Series]:
    """Events as text with every kind of defect, and the known item ids."""
    rng = np.random.default_rng(seed)
    users = [f"u{u}" for u in rng.integers(0, 300, n)]
    items = [f"i{i}" for i in rng.integers(0, 60, n)]
    times = [str(t) for t in rng.integers(1_600_000_000, 1_600_100_000, n)]
    weights = [str(w) for w in rng.integers(1, 6, n)]
    for row in rng.choice(n, n // 10, replace=False):
        kind = row % 6
        if kind == 0:
            users[row] = "  "
        elif kind == 1:
            times[row] = "not a time"
        elif kind == 2:
            weights[row] = "-1"
        elif kind == 3:
            items[row] = "i999"  # unknown
        elif kind == 4:
            users[row] = f" {users[row]} "  # same user once stripped
        else:
            j = int(rng.integers(0, n))
            users[row], items[row], times[row], weights[row] = (
                users[j].strip(),
                items[j],
                times[j],
                weights[j],
            )  # a duplicate of another row
    frame = pl.DataFrame(
        {C.USER_ID: users, C.ITEM_ID: items, C.TIMESTAMP: times, C.WEIGHT: weights}
    )
    return frame, pl.Series([f"i{i}" for i in range(60)])


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_partitioned_cleaning_equals_cleaning_the_whole_file(tmp_path, suffix):
    raw, known = _raw_events(20_000)
    path = tmp_path / f"events.{suffix}"
    raw.write_parquet(path) if suffix == "parquet" else raw.write_csv(path)
    # The reference is what the whole-file path does: `read_table` then `clean_interactions`.
    whole, whole_rejects = clean_interactions(read_table(path, "x"), str(path), known, None)

    result = clean_interactions_partitioned(path, tmp_path / "out", known, part_rows=2_000)
    assert len(result.parts) > 3  # really in parts
    parts = pl.concat([pl.read_parquet(p) for p in result.parts])
    key = [C.USER_ID, C.TIMESTAMP, C.ITEM_ID, C.WEIGHT]
    assert parts.sort(key).equals(whole.sort(key))
    # Users never span two parts, and each part is sorted by user then time.
    owners = pl.concat(
        [
            pl.read_parquet(p).select(C.USER_ID).unique().with_columns(part=i)
            for i, p in enumerate(result.parts)
        ]
    )
    assert owners[C.USER_ID].is_unique().all()
    first = pl.read_parquet(result.parts[0])
    assert first.equals(first.sort([C.USER_ID, C.TIMESTAMP], maintain_order=True))

    rejects = pl.concat([pl.read_parquet(p) for p in result.quarantine])
    assert result.rows_in == raw.height == result.rows_out + rejects.height
    assert result.rejected == dict(whole_rejects.group_by(C.REASON).len().iter_rows())
    assert len(result.rejected) == 5  # every defect above was caught
    pair = [C.REASON, C.ROW]
    assert rejects.select(pair).sort(pair).equals(whole_rejects.select(pair).sort(pair))
    assert not (tmp_path / "out" / "staging").exists()


def test_partitions_are_by_stripped_user(tmp_path):
    frame = pl.DataFrame(
        {C.USER_ID: ["a", " a", "a ", "b"] * 50, C.ITEM_ID: ["x"] * 200, C.TIMESTAMP: ["1"] * 200}
    )
    frame.write_parquet(tmp_path / "e.parquet")
    parts, rows = partition_by_user(tmp_path / "e.parquet", tmp_path / "p", 8, batch_rows=7)
    assert rows == 200
    holders = [set(pl.read_parquet(p)[C.USER_ID].str.strip_chars()) for p in parts]
    assert sum("a" in h for h in holders) == 1


def test_no_valid_row_names_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    pl.DataFrame({C.USER_ID: ["u"], C.ITEM_ID: ["nope"], C.TIMESTAMP: ["1"]}).write_csv(path)
    with pytest.raises(DataError, match=r"bad\.csv has no valid rows \(of 1\): unknown item: 1"):
        clean_interactions_partitioned(path, tmp_path / "out", pl.Series(["i1"]))
    with pytest.raises(DataError, match="no column 'user_id'"):
        pl.DataFrame({"who": ["u"]}).write_parquet(tmp_path / "x.parquet")
        clean_interactions_partitioned(tmp_path / "x.parquet", tmp_path / "o2", pl.Series(["i"]))
