"""Temporal leave-one-out split (docs/ARCHITECTURE.md, "The evaluation protocol").

Per user, in time order: the last event is the test target, the one before it the validation
target, the rest is training history. Events at the same time are put in a seeded random
order, never in id order: in MovieLens ids correlate with popularity, and an id tie-break
would make the held-out items systematically more or less popular than they really are.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from tailor import columns as C

log = logging.getLogger(__name__)

SEQ = "seq"  # position in the user's history, 0-based, in the order the split used
MIN_EVENTS_TO_HOLD_OUT = 3  # one for test, one for validation, at least one to learn from
_TIE_KEY = "__tailor_tie"


def split_leave_one_out(interactions: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Add `C.SPLIT` (train / valid / test) and `seq`; sorted by user, then history order."""
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

    seq = pl.int_range(pl.len(), dtype=pl.Int64).over(C.USER_ID)
    n = pl.len().over(C.USER_ID)
    held_out = n >= MIN_EVENTS_TO_HOLD_OUT
    split = (
        pl.when(held_out & (seq == n - 1))
        .then(pl.lit(C.TEST))
        .when(held_out & (seq == n - 2))
        .then(pl.lit(C.VALID))
        .otherwise(pl.lit(C.TRAIN))
    )
    out = ranked.with_columns(split.alias(C.SPLIT), seq.alias(SEQ))
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
