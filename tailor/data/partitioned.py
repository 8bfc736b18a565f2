"""Cleaning an interactions file bigger than memory: the same rules, one user partition at a time.

Every rule of `clean_interactions` looks at one row, except the duplicate check, which compares
rows of one user. So the file is streamed once, batch by batch, into `n_parts` Parquet files by
a hash of the (stripped) user id; each part then fits in memory and is cleaned by
`clean_interactions` itself, with its own quarantine. Memory holds one input batch, or one part,
never the file; the results are exactly those of cleaning the whole file at once (the same rows
kept, the same rows rejected for the same reasons).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tailor import columns as C
from tailor.data.clean import clean_interactions
from tailor.data.sources import DataError, _as_text, _rename_columns

# canonical name -> (the file's column, the setting that names it), as `load_files` maps them
ColumnMapping = dict[str, tuple[str, str]]

log = logging.getLogger(__name__)

_BUCKET = "__tailor_bucket"


@dataclass(frozen=True)
class PartitionedClean:
    """Clean events and their quarantine as Parquet parts, with the counts of the whole file."""

    parts: list[Path]  # clean events, each sorted by user then time; users never span parts
    quarantine: list[Path]
    rows_in: int
    rows_out: int
    rejected: dict[str, int] = field(default_factory=dict)
    n_parts: int = 1  # part i holds the users whose `user_bucket` is i; its file name says i


def user_bucket(column: str, n_parts: int) -> pl.Expr:
    """The part a user's events go to: a hash of the stripped id, the same in every batch."""
    return pl.col(column).str.strip_chars().fill_null("").hash(seed=0) % n_parts


def part_name(bucket: int) -> str:
    return f"users-{bucket:04d}.parquet"


def bucket_of(part: Path) -> int:
    """The bucket a part file holds (the inverse of `part_name`)."""
    return int(Path(part).stem.split("-")[1])


def _batches(path: Path, batch_rows: int):
    """The file as Arrow record batches of up to `batch_rows` rows, every column as text."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
    elif suffix in (".csv", ".tsv", ".tab"):
        parse = pa_csv.ParseOptions(delimiter="," if suffix == ".csv" else "\t")
        schema = pa_csv.open_csv(path, parse_options=parse).schema  # the header: names only
        # An empty field is null and a quoted "" is "", as when polars reads the whole file.
        convert = pa_csv.ConvertOptions(
            column_types={n: pa.string() for n in schema.names},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            null_values=[""],
        )
        read = pa_csv.ReadOptions(block_size=1 << 24)
        with pa_csv.open_csv(
            path, read_options=read, parse_options=parse, convert_options=convert
        ) as reader:
            yield from reader
    else:
        raise DataError(
            f"interactions file {path} has an unknown suffix {suffix!r}; "
            "expected .csv, .tsv, .tab, .parquet or .pq"
        )


def partition_by_user(
    path: Path,
    out_dir: Path,
    n_parts: int,
    batch_rows: int = 1_000_000,
    columns: ColumnMapping | None = None,
) -> tuple[list[Path], int]:
    """Stream `path` into `n_parts` Parquet files by a hash of the stripped user id: (the parts,
    rows read). Columns are kept as text, as `clean_interactions` expects them; `columns`
    renames the file's columns to canonical names first."""
    path, out_dir = Path(path), Path(out_dir)
    if not path.is_file():
        raise DataError(f"interactions file {path} does not exist")
    if n_parts < 1:
        raise ValueError(f"n_parts must be at least 1, got {n_parts}")
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pq.ParquetWriter] = {}
    targets = [out_dir / part_name(i) for i in range(n_parts)]
    rows = 0
    try:
        for batch in tqdm(_batches(path, batch_rows), desc="partition", unit="batch"):
            frame = pl.from_arrow(batch)
            if not isinstance(frame, pl.DataFrame):  # pragma: no cover - a batch is a table
                frame = frame.to_frame()
            frame = _as_text(frame, path, "interactions")
            if columns is not None:
                frame = _rename_columns(frame, columns, "interactions", path)
            if C.USER_ID not in frame.columns:
                raise DataError(
                    f"interactions file {path} has no column {C.USER_ID!r}; "
                    f"columns present: {', '.join(frame.columns)}"
                )
            rows += frame.height
            bucket = user_bucket(C.USER_ID, n_parts).alias(_BUCKET)
            for (key,), part in (
                frame.with_columns(bucket)
                .partition_by(_BUCKET, as_dict=True, include_key=False)
                .items()
            ):
                table = part.to_arrow()
                if key not in writers:
                    writers[key] = pq.ParquetWriter(targets[key], table.schema)
                writers[key].write_table(table)
    finally:
        for writer in writers.values():
            writer.close()
    return [targets[i] for i in sorted(writers)], rows


def clean_interactions_partitioned(
    path: Path,
    out_dir: Path,
    known_items: pl.Series,
    timestamp_format: str | None = None,
    part_rows: int = 2_000_000,
    columns: ColumnMapping | None = None,
) -> PartitionedClean:
    """`clean_interactions` on a file of any size, with bounded memory (about `part_rows` events
    at once). Writes clean parts and quarantine parts under `out_dir`; raises DataError, naming
    the file, when no row is valid. `columns` maps the file's column names (see
    `partition_by_user`)."""
    path, out_dir = Path(path), Path(out_dir)
    size = path.stat().st_size if path.is_file() else 0
    # A first guess of the row count from the file size; a part may come out bigger or smaller.
    guess = max(1, size // 12) if path.suffix.lower() == ".parquet" else max(1, size // 40)
    n_parts = max(1, math.ceil(guess / part_rows))
    staging = out_dir / "staging"
    buckets, rows_in = partition_by_user(path, staging, n_parts, columns=columns)
    parts, quarantine = [], []
    rejected: Counter = Counter()
    rows_out = 0
    (out_dir / "clean").mkdir(parents=True, exist_ok=True)
    (out_dir / "quarantine").mkdir(parents=True, exist_ok=True)
    try:
        for bucket in tqdm(buckets, desc="clean", unit="part"):
            raw = pl.read_parquet(bucket)
            clean, rejects = clean_interactions(
                raw, str(path), known_items, timestamp_format, allow_empty=True
            )
            rows_out += clean.height
            if rejects.height:
                rejected.update(dict(rejects.group_by(C.REASON).len().iter_rows()))
                target = out_dir / "quarantine" / bucket.name
                write_atomically(rejects, target)
                quarantine.append(target)
            if clean.height:
                target = out_dir / "clean" / bucket.name
                write_atomically(clean, target)
                parts.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if rows_out == 0:
        detail = ", ".join(f"{r}: {n}" for r, n in rejected.most_common()) or "no rows"
        raise DataError(f"interactions file {path} has no valid rows (of {rows_in}): {detail}")
    log.info(
        "interactions %s: %d rows in %d parts, %d kept; rejected %s",
        path,
        rows_in,
        len(buckets),
        rows_out,
        dict(rejected) or "none",
    )
    return PartitionedClean(
        parts, quarantine, rows_in, rows_out, dict(rejected.most_common()), n_parts
    )


def write_atomically(frame: pl.DataFrame, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, target)
