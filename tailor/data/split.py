"""Temporal leave-one-out split (docs/ARCHITECTURE.md, "The evaluation protocol").

Per user, in time order: the last positive event is the test target, the positive before it
the validation target. Events before the validation target are training history; the
validation target and the events after it up to the test target are `valid` (the test case's
extra history); the test target and anything after it are `test` (only the target is scored).
With every event a positive this is the classic split: last = test, one before = validation.

Events at the same time are put in a seeded random order, never in id order: in MovieLens ids
correlate with popularity, and an id tie-break would make the held-out items systematically
more or less popular than they really are. Each event's place in that order comes from a keyed
hash of the event itself (user, item, time, weight) and the seed, not from a generator run over
the whole table, so a user's split depends on that user's events only: splitting the users in
partitions (`tailor.data.partitioned`) gives exactly the split of the whole table.
"""

from __future__ import annotations

import logging
from hashlib import blake2b

import numpy as np
import polars as pl

from tailor import columns as C

log = logging.getLogger(__name__)

SEQ = "seq"  # position in the user's history, 0-based, in the order the split used
_TIE_KEY = "__tailor_tie"


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves about half the output bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _text_keys(values: pl.Series, what: bytes) -> np.ndarray:
    """A 64-bit hash per value that is the same in every process and polars version (polars'
    own hash is not), computed once per distinct value."""
    distinct = values.unique()
    keys = np.fromiter(
        (
            int.from_bytes(blake2b(v.encode(), digest_size=8, person=what).digest(), "little")
            for v in distinct.cast(pl.Utf8).fill_null("").to_list()
        ),
        dtype=np.uint64,
        count=distinct.len(),
    )
    lookup = pl.DataFrame({"v": distinct, "k": pl.Series(keys, dtype=pl.UInt64)})
    joined = values.to_frame("v").join(lookup, on="v", how="left", nulls_equal=True)
    return joined.get_column("k").to_numpy()


def tie_keys(interactions: pl.DataFrame, seed: int) -> pl.Series:
    """Each event's seeded random rank among events of its user at the same time: a hash of
    (seed, user, item, time, weight), so it depends on the event and the seed alone."""
    with np.errstate(over="ignore"):
        key = _mix(np.full(interactions.height, seed, dtype=np.uint64) + np.uint64(0x9E3779B9))
        key = _mix(key ^ _text_keys(interactions.get_column(C.USER_ID), b"tailor-user"))
        if C.ITEM_ID in interactions.columns:
            key = _mix(key ^ _text_keys(interactions.get_column(C.ITEM_ID), b"tailor-item"))
        when = interactions.get_column(C.TIMESTAMP).dt.epoch("us").fill_null(0)
        key = _mix(key ^ when.to_numpy().astype(np.int64).view(np.uint64))
        if C.WEIGHT in interactions.columns:
            weight = interactions.get_column(C.WEIGHT).cast(pl.Float64).fill_null(0.0)
            key = _mix(key ^ weight.to_numpy().view(np.uint64))
    return pl.Series(_TIE_KEY, key, dtype=pl.UInt64)


def positive_flags(weight: pl.Expr, threshold: float | None) -> pl.Expr:
    """True where an event is a positive (weight >= threshold; every event without one)."""
    if threshold is None:
        return pl.lit(True).alias(C.POSITIVE)
    return (weight >= threshold).alias(C.POSITIVE)


def split_leave_one_out(
    interactions: pl.DataFrame, seed: int, positive_threshold: float | None = None
) -> pl.DataFrame:
    """Add `C.SPLIT` (train / valid / test), `C.POSITIVE` and `seq`; sorted by user, then
    history order. A user is held out only with two positives and an earlier event."""
    for column in (C.USER_ID, C.TIMESTAMP):
        if column not in interactions.columns:
            raise ValueError(
                f"split_leave_one_out needs column {column!r}; "
                f"columns present: {', '.join(interactions.columns)}"
            )
    # The columns after the key only order exact repeats (a hash collision, or rows the
    # cleaning would have rejected), so the output never depends on the order rows arrived in.
    rest = [c for c in (C.ITEM_ID, C.WEIGHT) if c in interactions.columns]
    keyed = interactions.with_columns(tie_keys(interactions, seed))
    ranked = keyed.sort([C.USER_ID, C.TIMESTAMP, _TIE_KEY, *rest], maintain_order=True).drop(
        _TIE_KEY
    )

    weight = pl.col(C.WEIGHT) if C.WEIGHT in ranked.columns else pl.lit(1.0)
    ranked = ranked.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).over(C.USER_ID).alias(SEQ),
        positive_flags(weight, positive_threshold),
    )
    seq, positive = pl.col(SEQ), pl.col(C.POSITIVE)
    n_positive = positive.cast(pl.Int64).sum().over(C.USER_ID)
    rank = positive.cast(pl.Int64).cum_sum().over(C.USER_ID)  # 1-based among positives
    test_at = pl.when(positive & (rank == n_positive)).then(seq).max().over(C.USER_ID)
    valid_at = pl.when(positive & (rank == n_positive - 1)).then(seq).max().over(C.USER_ID)
    held_out = (n_positive >= 2) & (valid_at >= 1)
    split = (
        pl.when(held_out & (seq >= test_at))
        .then(pl.lit(C.TEST))
        .when(held_out & (seq >= valid_at))
        .then(pl.lit(C.VALID))
        .otherwise(pl.lit(C.TRAIN))
    )
    out = ranked.with_columns(split.alias(C.SPLIT))
    rest = [c for c in out.columns if c not in (C.SPLIT, SEQ, C.POSITIVE)]
    out = out.select(*rest, C.SPLIT, SEQ, C.POSITIVE)
    counts = dict(out.group_by(C.SPLIT).len().iter_rows())
    log.info(
        "leave-one-out split (seed %d): %d train, %d valid, %d test events; %d users",
        seed,
        counts.get(C.TRAIN, 0),
        counts.get(C.VALID, 0),
        counts.get(C.TEST, 0),
        out.get_column(C.USER_ID).n_unique(),
    )
    return out
