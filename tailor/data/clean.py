"""Typed, validated inputs; every rejected row goes to quarantine with a reason.

Each table is checked row by row against fixed rules (the first rule a row breaks is its
reason), then de-duplicated among the rows that passed, so a valid row is never rejected as the
duplicate of an invalid one. Counts always balance: rows in = rows out + rows rejected.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import polars as pl

from tailor import columns as C
from tailor.data.sources import DataError, RawData, render_template

log = logging.getLogger(__name__)

MISSING_USER_ID = "missing user_id"
MISSING_ITEM_ID = "missing item_id"
DUPLICATE_ITEM_ID = "duplicate item_id"
DUPLICATE_USER_ID = "duplicate user_id"
EMPTY_TEXT = "empty text"
NO_VECTOR = "no vector"
UNPARSEABLE_TIMESTAMP = "unparseable timestamp"
INVALID_WEIGHT = "invalid weight"
DUPLICATE_ROW = "duplicate row"
UNKNOWN_ITEM = "unknown item"

# Beyond this many epoch seconds (about the year 5100) a number is not a time in seconds;
# usually milliseconds, which would otherwise land tens of thousands of years out.
_MAX_EPOCH_SECONDS = 1e11
_TIMESTAMP_DTYPE = pl.Datetime("us", "UTC")
# Tried in order after the ISO text is normalised to 'T' and '+00:00' (see _parse_iso).
_ISO_AWARE = ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M%:z"]
_ISO_NAIVE = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d"]

QUARANTINE_SCHEMA = {C.SOURCE: pl.Utf8, C.REASON: pl.Utf8, C.ROW: pl.Utf8}
_ROW = "__tailor_row"
_WHY = "__tailor_reason"


@dataclass(frozen=True)
class CleanData:
    """Typed inputs plus everything that was rejected, and a count of both per input."""

    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame | None
    quarantine: pl.DataFrame
    report: dict[str, dict[str, Any]]


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


# --------------------------------------------------------------------------- shared helpers


def _require(frame: pl.DataFrame, columns: list[str], what: str, source: str) -> None:
    for column in columns:
        if column not in frame.columns:
            raise DataError(
                f"{what} file {source} has no column {column!r}; "
                f"columns present: {', '.join(frame.columns)}"
            )


def _as_text(frame: pl.DataFrame) -> pl.DataFrame:
    # RawData promises strings; a caller handing in typed columns still gets the same rules.
    casts = [pl.col(n).cast(pl.Utf8) for n, t in frame.schema.items() if t != pl.Utf8]
    return frame.with_columns(casts) if casts else frame


def _blank(column: str) -> pl.Expr:
    return pl.col(column).is_null() | (pl.col(column).str.strip_chars() == "")


def _no_words(column: str) -> pl.Expr:
    """No letter or digit at all: a template whose fields are all empty renders as ". "."""
    return pl.col(column).is_null() | ~pl.col(column).str.contains(r"[\p{L}\p{N}]")


def _first_reason(checks: list[tuple[pl.Expr, str]]) -> pl.Expr:
    """The reason of the first failing check, null when the row passes them all."""
    expr: Any = pl
    for failed, reason in checks:
        expr = expr.when(failed).then(pl.lit(reason, dtype=pl.Utf8))
    return expr.otherwise(pl.lit(None, dtype=pl.Utf8)).alias(_WHY)


def _mark_duplicates(frame: pl.DataFrame, keys: list[str], reason: str) -> pl.DataFrame:
    """Among rows with no reason yet, every repeat of `keys` after the first gets `reason`."""
    ok = pl.col(_WHY).is_null()
    # Partitioned by "passed so far", so a rejected row is never the first of a valid group.
    first = pl.struct(keys).is_first_distinct().over(ok)
    return frame.with_columns(
        pl.when(ok & ~first).then(pl.lit(reason, dtype=pl.Utf8)).otherwise(pl.col(_WHY)).alias(_WHY)
    )


def _quarantine(
    original: pl.DataFrame, judged: pl.DataFrame, source: str
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Rejected rows as they arrived (JSON), plus a count per reason."""
    rejected = judged.filter(pl.col(_WHY).is_not_null()).select(_ROW, _WHY)
    if rejected.height == 0:
        return empty_quarantine(), {}
    rows = original.with_row_index(_ROW).join(rejected, on=_ROW, how="inner").sort(_ROW)
    quarantine = rows.select(
        pl.lit(source, dtype=pl.Utf8).alias(C.SOURCE),
        pl.col(_WHY).alias(C.REASON),
        pl.struct(original.columns).struct.json_encode().alias(C.ROW),
    )
    counts = dict(
        rejected.group_by(_WHY).len().sort(["len", _WHY], descending=[True, False]).iter_rows()
    )
    return quarantine, counts


def _log_counts(
    what: str, source: str, rows_in: int, rows_out: int, counts: dict[str, int]
) -> None:
    detail = ", ".join(f"{reason}: {n}" for reason, n in counts.items()) or "none"
    log.info("%s %s: %d rows in, %d kept; rejected %s", what, source, rows_in, rows_out, detail)


def _no_valid_rows(what: str, source: str, rows_in: int, counts: dict[str, int]) -> DataError:
    if rows_in == 0:
        return DataError(f"{what} file {source} has no rows")
    detail = ", ".join(f"{reason}: {n}" for reason, n in counts.items())
    hint = ""
    if counts and next(iter(counts)) == UNPARSEABLE_TIMESTAMP:
        hint = (
            f"; column {C.TIMESTAMP!r} must hold epoch seconds or ISO 8601 times, "
            "or set data.timestamp_format to its strptime format"
        )
    elif counts and next(iter(counts)) == UNKNOWN_ITEM:
        hint = f"; no {C.ITEM_ID!r} in it appears in the items file"
    return DataError(f"{what} file {source} has no valid rows (of {rows_in}): {detail}{hint}")


# --------------------------------------------------------------------------- timestamps


def _parse_numeric(text: pl.Series) -> pl.Series:
    """Epoch seconds, integer or fractional; integers are converted without a float detour."""
    as_int = text.cast(pl.Int64, strict=False)
    as_float = text.cast(pl.Float64, strict=False)
    in_range = as_float.is_finite() & (as_float.abs() <= _MAX_EPOCH_SECONDS)
    micros = (
        pl.select(
            pl.when(as_int.is_not_null() & in_range)
            .then(as_int * 1_000_000)
            .when(in_range)
            .then((as_float * 1_000_000).round(0).cast(pl.Int64, strict=False))
        )
        .to_series()
        .alias(text.name)
    )
    return pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC")


def _to_utc(parsed: pl.Series) -> pl.Series:
    zone = getattr(parsed.dtype, "time_zone", None)
    if zone is None:
        return parsed.dt.replace_time_zone("UTC")
    return parsed.dt.convert_time_zone("UTC")


def _parse_iso(text: pl.Series) -> pl.Series:
    """ISO 8601 date or date-time, with or without an offset; naive times are taken as UTC."""
    normal = text.str.replace(r"^(\d{4}-\d{2}-\d{2})[ t]", "${1}T").str.replace(r"[zZ]$", "+00:00")
    tries = [_to_utc(normal.str.to_datetime(f, strict=False, time_unit="us")) for f in _ISO_AWARE]
    tries += [_to_utc(normal.str.to_datetime(f, strict=False, time_unit="us")) for f in _ISO_NAIVE]
    parsed = pl.select(pl.coalesce(tries)).to_series()
    # The standard allows forms no fixed format above covers (basic '20200102T0304', week
    # dates); Python's parser takes the few leftovers, once per distinct value.
    leftover = normal.filter(parsed.is_null() & normal.is_not_null()).unique().to_list()
    if not leftover:
        return parsed.alias(text.name)
    found: dict[str, dt.datetime] = {}
    for value in leftover:
        try:
            stamp = dt.datetime.fromisoformat(value)
        except ValueError:
            continue
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        found[value] = stamp.astimezone(dt.UTC)
    if not found:
        return parsed.alias(text.name)
    fallback = normal.replace_strict(
        list(found), list(found.values()), default=None, return_dtype=_TIMESTAMP_DTYPE
    )
    return parsed.fill_null(fallback).alias(text.name)


def parse_timestamps(text: pl.Series, timestamp_format: str | None = None) -> pl.Series:
    """Datetime("us", "UTC") per value; null where the value cannot be read as a time.

    With `timestamp_format` only that strptime format is tried: the user said what the data
    is, and guessing further could read a day-first date month-first.
    """
    text = text.cast(pl.Utf8).str.strip_chars()
    if timestamp_format is not None:
        parsed = text.str.to_datetime(timestamp_format, strict=False, time_unit="us")
        return _to_utc(parsed).alias(text.name)
    numeric = _parse_numeric(text)
    todo = numeric.is_null() & text.is_not_null()
    if not todo.any():
        return numeric
    return numeric.fill_null(_parse_iso(text.set(~todo, None)))


# --------------------------------------------------------------------------- items


def clean_items(
    items: pl.DataFrame,
    source: str,
    text_template: str,
    label_template: str,
    item_vectors: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Items with stripped ids, rendered text and label, sorted by id; and their quarantine."""
    _require(items, [C.ITEM_ID], "items", source)
    original = _as_text(items)
    frame = original.with_row_index(_ROW).with_columns(pl.col(C.ITEM_ID).str.strip_chars())
    label = render_template(frame, label_template)
    text = render_template(frame, text_template)
    # The rendered text and label replace any input columns of the same name.
    frame = frame.with_columns(
        pl.when(label == "").then(pl.col(C.ITEM_ID)).otherwise(label).alias(C.LABEL)
    )

    checks: list[tuple[pl.Expr, str]] = [(_blank(C.ITEM_ID), MISSING_ITEM_ID)]
    if item_vectors is None:
        frame = frame.with_columns(text.alias(C.TEXT))
        checks.append((_no_words(C.TEXT), EMPTY_TEXT))
    else:
        absent = [c for c in (C.ITEM_ID, C.VECTOR) if c not in item_vectors.columns]
        if absent:
            raise DataError(
                f"item vectors have no column {absent[0]!r} (to match the items of {source}); "
                f"columns present: {', '.join(item_vectors.columns)}"
            )
        have = (
            item_vectors.filter(pl.col(C.VECTOR).is_not_null())
            .get_column(C.ITEM_ID)
            .cast(pl.Utf8)
            .str.strip_chars()
        )
        # A vector is what gets indexed, so the text is only for people: fall back to the label.
        frame = frame.with_columns(
            pl.when(text == "").then(pl.col(C.LABEL)).otherwise(text).alias(C.TEXT)
        )
        checks.append((~pl.col(C.ITEM_ID).is_in(have.implode()), NO_VECTOR))
    judged = frame.with_columns(_first_reason(checks))
    judged = _mark_duplicates(judged, [C.ITEM_ID], DUPLICATE_ITEM_ID)

    quarantine, counts = _quarantine(original, judged, source)
    fields = [n for n in original.columns if n not in (C.ITEM_ID, C.TEXT, C.LABEL)]
    clean = (
        judged.filter(pl.col(_WHY).is_null())
        .select(C.ITEM_ID, C.TEXT, C.LABEL, *fields)
        .sort(C.ITEM_ID, maintain_order=True)
    )
    _log_counts("items", source, items.height, clean.height, counts)
    if clean.height == 0:
        raise _no_valid_rows("items", source, items.height, counts)
    return clean, quarantine


# --------------------------------------------------------------------------- interactions


def clean_interactions(
    interactions: pl.DataFrame,
    source: str,
    known_items: pl.Series,
    timestamp_format: str | None,
    allow_empty: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Typed interactions of known items, sorted by user then time; and their quarantine.

    `allow_empty` is for an optional extra source (the live log), whose rejects must still
    reach the quarantine instead of stopping the run.
    """
    _require(interactions, [C.USER_ID, C.ITEM_ID, C.TIMESTAMP], "interactions", source)
    original = _as_text(interactions)
    has_weight = C.WEIGHT in original.columns
    frame = original.with_row_index(_ROW).with_columns(
        pl.col(C.USER_ID).str.strip_chars(),
        pl.col(C.ITEM_ID).str.strip_chars(),
        parse_timestamps(original.get_column(C.TIMESTAMP), timestamp_format).alias(C.TIMESTAMP),
        (
            pl.col(C.WEIGHT).str.strip_chars().cast(pl.Float64, strict=False)
            if has_weight
            else pl.lit(1.0, dtype=pl.Float64)
        ).alias(C.WEIGHT),
    )
    weight = pl.col(C.WEIGHT)
    known = known_items.cast(pl.Utf8).implode()
    judged = frame.with_columns(
        _first_reason(
            [
                (_blank(C.USER_ID), MISSING_USER_ID),
                (_blank(C.ITEM_ID), MISSING_ITEM_ID),
                (pl.col(C.TIMESTAMP).is_null(), UNPARSEABLE_TIMESTAMP),
                (weight.is_null() | ~weight.is_finite() | (weight < 0), INVALID_WEIGHT),
                (~pl.col(C.ITEM_ID).is_in(known), UNKNOWN_ITEM),
            ]
        )
    )
    judged = _mark_duplicates(judged, [C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.WEIGHT], DUPLICATE_ROW)

    quarantine, counts = _quarantine(original, judged, source)
    canonical = [C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.WEIGHT]
    extras = [name for name in original.columns if name not in canonical]
    # Stable, so events at the same time keep file order; the split breaks those ties itself.
    clean = (
        judged.filter(pl.col(_WHY).is_null())
        .select(*canonical, *extras)
        .sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)
    )
    _log_counts("interactions", source, interactions.height, clean.height, counts)
    if clean.height == 0 and not allow_empty:
        raise _no_valid_rows("interactions", source, interactions.height, counts)
    return clean, quarantine


# --------------------------------------------------------------------------- users


def clean_users(users: pl.DataFrame, source: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Users with stripped, unique ids, sorted by id; and their quarantine."""
    _require(users, [C.USER_ID], "users", source)
    original = _as_text(users)
    frame = original.with_row_index(_ROW).with_columns(pl.col(C.USER_ID).str.strip_chars())
    judged = frame.with_columns(_first_reason([(_blank(C.USER_ID), MISSING_USER_ID)]))
    judged = _mark_duplicates(judged, [C.USER_ID], DUPLICATE_USER_ID)
    quarantine, counts = _quarantine(original, judged, source)
    clean = (
        judged.filter(pl.col(_WHY).is_null())
        .select(original.columns)
        .sort(C.USER_ID, maintain_order=True)
    )
    _log_counts("users", source, users.height, clean.height, counts)
    return clean, quarantine


# --------------------------------------------------------------------------- all inputs


def report_entry(source: str, rows_in: int, rows_out: int, quarantine: pl.DataFrame) -> dict:
    """One input's line of the cleaning report: rows in, rows kept, rejects per reason."""
    rejected = dict(
        quarantine.group_by(C.REASON)
        .len()
        .sort(["len", C.REASON], descending=[True, False])
        .iter_rows()
    )
    return {"file": source, "rows_in": rows_in, "rows_out": rows_out, "rejected": rejected}


def clean_live_items(live: pl.DataFrame, source: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The live log's items under the rules source items pass: a blank id or an empty text is
    quarantined with its reason. A repeated id is not an error here (a later text updates an
    item); the last one wins in `merge_live_items`."""
    _require(live, [C.ITEM_ID, C.TEXT], "items", source)
    original = _as_text(live.select(C.ITEM_ID, C.TEXT, C.LABEL))
    frame = original.with_row_index(_ROW).with_columns(
        pl.col(C.ITEM_ID).str.strip_chars(), pl.col(C.TEXT).str.strip_chars()
    )
    judged = frame.with_columns(
        _first_reason([(_blank(C.ITEM_ID), MISSING_ITEM_ID), (_no_words(C.TEXT), EMPTY_TEXT)])
    )
    quarantine, counts = _quarantine(original, judged, source)
    kept = judged.filter(pl.col(_WHY).is_null()).with_columns(
        pl.when(_blank(C.LABEL)).then(pl.col(C.ITEM_ID)).otherwise(pl.col(C.LABEL)).alias(C.LABEL)
    )
    _log_counts("live items", source, live.height, kept.height, counts)
    return kept.select(C.ITEM_ID, C.TEXT, C.LABEL), quarantine


def merge_live_items(items: pl.DataFrame, live: pl.DataFrame) -> pl.DataFrame:
    """Items with the live log's texts applied: known ids get the new text and label, new ids
    are added (their other fields empty); sorted by id like `clean_items`' output."""
    if live.is_empty():
        return items
    live = live.select(C.ITEM_ID, C.TEXT, C.LABEL).unique(C.ITEM_ID, keep="last")
    updated = items.update(live, on=C.ITEM_ID)
    new = live.filter(~pl.col(C.ITEM_ID).is_in(items[C.ITEM_ID].implode()))
    merged = pl.concat([updated, new], how="diagonal_relaxed")
    return merged.sort(C.ITEM_ID, maintain_order=True)


@dataclass(frozen=True)
class CleanCatalogue:
    """Items (the live log's applied) and users, cleaned: everything but the events."""

    items: pl.DataFrame
    users: pl.DataFrame | None
    report: dict[str, dict[str, Any]]  # "items", and "live_items" / "users" when present
    quarantine: list[pl.DataFrame]


def clean_catalogue(
    raw: RawData,
    item_vectors: pl.DataFrame | None = None,
    live_items: pl.DataFrame | None = None,
    live_source: str = "live log",
) -> CleanCatalogue:
    """Items first (events are checked against them), the live log's texts over the file's,
    then users. `raw.interactions` is not read."""
    src_items = raw.sources.get("items", "items")
    items, q_items = clean_items(
        raw.items, src_items, raw.text_template, raw.label_template, item_vectors
    )
    report = {"items": report_entry(src_items, raw.items.height, items.height, q_items)}
    quarantine = [q_items]
    if live_items is not None and not live_items.is_empty():
        src_live_items = f"{live_source} (items)"
        kept, q_live_items = clean_live_items(live_items, src_live_items)
        report["live_items"] = report_entry(
            src_live_items, live_items.height, kept.height, q_live_items
        )
        quarantine.append(q_live_items)
        items = merge_live_items(items, kept)
    users = None
    if raw.users is not None:
        src_users = raw.sources.get("users", "users")
        users, q_users = clean_users(raw.users, src_users)
        report["users"] = report_entry(src_users, raw.users.height, users.height, q_users)
        quarantine.append(q_users)
    return CleanCatalogue(items=items, users=users, report=report, quarantine=quarantine)


def clean_live_events(
    live_events: pl.DataFrame | None, known_items: pl.Series, live_source: str = "live log"
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]] | None:
    """The live log's events under the file's rules, as their own source: (events, quarantine,
    report entry); None when the log has none."""
    if live_events is None or live_events.is_empty():
        return None
    src_live = f"{live_source} (events)"
    # The log stores typed UTC times: read them as ISO text, whatever the file's format.
    as_text = live_events.select(
        pl.col(C.USER_ID),
        pl.col(C.ITEM_ID),
        pl.col(C.TIMESTAMP).dt.strftime("%Y-%m-%dT%H:%M:%S%.f%:z"),
        pl.col(C.WEIGHT).cast(pl.Utf8),
    )
    live, q_live = clean_interactions(as_text, src_live, known_items, None, allow_empty=True)
    return live, q_live, report_entry(src_live, as_text.height, live.height, q_live)


def ordered_report(
    interactions: dict[str, Any], catalogue: dict[str, Any], live_events: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """The cleaning report in its documented order: interactions, items, live items, live
    events, users."""
    report = {"interactions": interactions, "items": catalogue["items"]}
    if "live_items" in catalogue:
        report["live_items"] = catalogue["live_items"]
    if live_events is not None:
        report["live_events"] = live_events
    if "users" in catalogue:
        report["users"] = catalogue["users"]
    return report


def clean_all(
    raw: RawData,
    timestamp_format: str | None = None,
    item_vectors: pl.DataFrame | None = None,
    live_items: pl.DataFrame | None = None,
    live_events: pl.DataFrame | None = None,
    live_source: str = "live log",
) -> CleanData:
    """Clean items first (interactions are checked against them), then interactions and users.

    `live_items` (item_id, text, label) and `live_events` (user_id, item_id, timestamp, weight)
    come from the service's live log (`tailor.livelog`): items are applied over the file's,
    events are cleaned as a second source with their own report entry and quarantine rows.
    """
    if raw.interactions is None:
        raise ValueError("clean_all needs the interactions; streamed files go part by part")
    catalogue = clean_catalogue(raw, item_vectors, live_items, live_source)
    known = catalogue.items.get_column(C.ITEM_ID)
    src_inter = raw.sources.get("interactions", "interactions")
    interactions, q_inter = clean_interactions(raw.interactions, src_inter, known, timestamp_format)
    entry = report_entry(src_inter, raw.interactions.height, interactions.height, q_inter)
    live = clean_live_events(live_events, known, live_source)
    if live is not None:
        interactions = pl.concat([interactions, live[0]], how="diagonal_relaxed").sort(
            [C.USER_ID, C.TIMESTAMP], maintain_order=True
        )
    return CleanData(
        interactions=interactions,
        items=catalogue.items,
        users=catalogue.users,
        quarantine=ordered_quarantine(q_inter, catalogue, live[1] if live else None),
        report=ordered_report(entry, catalogue.report, live[2] if live else None),
    )


def ordered_quarantine(
    interactions: pl.DataFrame, catalogue: CleanCatalogue, live_events: pl.DataFrame | None
) -> pl.DataFrame:
    """Every rejected row, in the report's order of sources."""
    frames = [interactions, *catalogue.quarantine]
    if live_events is not None:
        # before the users' rows, which `clean_catalogue` puts last
        frames.insert(len(frames) - (catalogue.users is not None), live_events)
    return pl.concat(frames, how="vertical")


def summarize_quarantine(quarantine: pl.DataFrame) -> pl.DataFrame:
    """Rejected rows counted per source and reason, most frequent first."""
    return (
        quarantine.group_by(C.SOURCE, C.REASON)
        .len()
        .rename({"len": "rows"})
        .sort(["rows", C.SOURCE, C.REASON], descending=[True, False, False])
    )
