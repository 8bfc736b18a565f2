"""Temporal leave-one-out split (docs/ARCHITECTURE.md, "The evaluation protocol").

Per user, in time order: the last positive event is the test target, the positive before it
the validation target. Events before the validation target are training history; the
validation target and the events after it up to the test target are `valid` (the test case's
extra history); the test target and anything after it are `test` (only the target is scored).
With every event a positive this is the classic split: last = test, one before = validation.

Events at the same time are put in a seeded random order, never in id order: in MovieLens ids
correlate with popularity, and an id tie-break would make the held-out items systematically
more or less popular than they really are.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from tailor import columns as C

log = logging.getLogger(__name__)

SEQ = "seq"  # position in the user's history, 0-based, in the order the split used
_TIE_KEY = "__tailor_tie"


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
    # The random keys are dealt out in a canonical row order, so the split depends only on the
    # rows and the seed, not on the order the rows arrived in. The id sort here only fixes who
    # gets which key; the keys themselves are independent of it.
    canonical = [
        c for c in (C.USER_ID, C.TIMESTAMP, C.ITEM_ID, C.WEIGHT) if c in interactions.columns
    ]
    ordered = interactions.sort(canonical, maintain_order=True)
    rng = np.random.default_rng(seed)
    keyed = ordered.with_columns(pl.Series(_TIE_KEY, rng.random(ordered.height)))
    ranked = keyed.sort([C.USER_ID, C.TIMESTAMP, _TIE_KEY], maintain_order=True).drop(_TIE_KEY)

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
