"""Training windows on disk, so a fit's memory does not grow with the number of events.

`SeqRecommender.fit` cuts every history into windows in memory: fine to a few million events.
For more, `write_windows` streams an events file (Parquet, each user's events together and in
order) batch by batch, cuts the same windows and appends them to a file; `WindowFile.batches`
reads them back in a seeded block shuffle (blocks in a random order, windows shuffled inside a
buffer of blocks), so memory holds one buffer, never the whole file. The windows, their order
in the file and the item counts are exactly those `make_training_windows` gives for the same
histories, and with a buffer that holds every window the batches are exactly the in-memory
fit's (a test compares the two fits).

A window file is two flat arrays: int32 item positions (-1 = padding) and uint8 "may be a
target" flags, `n` rows of `width` = max_len + 1, beside a small JSON header.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tailor import columns as C

_ITEMS_FILE = "windows.i32"
_FLAGS_FILE = "targets.u8"
_HEADER = "windows.json"


@dataclass(frozen=True)
class WindowFile:
    """Windows written by `write_windows`; `counts` are each item's positive events."""

    folder: Path
    n: int  # windows
    width: int  # max_len + 1
    counts: np.ndarray  # positive events per item position (what the full fit's bincount gives)
    events: int  # events read
    users: int
    targets: int  # events that are a training target (a positive after another event)

    @classmethod
    def open(cls, folder: Path) -> WindowFile:
        folder = Path(folder)
        header = json.loads((folder / _HEADER).read_text())
        counts = np.load(folder / "counts.npy", allow_pickle=False)
        return cls(
            folder,
            header["n"],
            header["width"],
            counts,
            header["events"],
            header["users"],
            header["targets"],
        )

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop): (windows int64, target flags bool), read without a memory map
        so the pages read do not stay in the process's memory."""
        count = (stop - start) * self.width
        items = np.fromfile(
            self.folder / _ITEMS_FILE, np.int32, count=count, offset=start * self.width * 4
        )
        flags = np.fromfile(
            self.folder / _FLAGS_FILE, np.uint8, count=count, offset=start * self.width
        )
        shape = (stop - start, self.width)
        return items.reshape(shape).astype(np.int64), flags.reshape(shape).astype(bool)

    def batches(
        self, rng: np.random.Generator, batch_size: int, block: int, buffer_blocks: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of (inputs, targets) batches: targets are -1 where an event may not be a
        target. Blocks of `block` windows come in a random order, `buffer_blocks` at a time,
        shuffled together; a buffer's last partial batch joins the next buffer's first."""
        n_blocks = max(1, -(-self.n // block))
        # One block: no draw for the block order, so the shuffle is the in-memory fit's.
        order = rng.permutation(n_blocks) if n_blocks > 1 else np.zeros(1, dtype=np.int64)
        carry: tuple[np.ndarray, np.ndarray] | None = None
        for first in range(0, n_blocks, buffer_blocks):
            parts = [
                self.read(b * block, min(self.n, (b + 1) * block))
                for b in order[first : first + buffer_blocks]
            ]
            windows = np.concatenate([p[0] for p in parts])
            flags = np.concatenate([p[1] for p in parts])
            shuffle = rng.permutation(len(windows))
            windows, flags = windows[shuffle], flags[shuffle]
            if carry is not None:
                windows = np.concatenate([carry[0], windows])
                flags = np.concatenate([carry[1], flags])
                carry = None
            full = len(windows) - len(windows) % batch_size
            last = first + buffer_blocks >= n_blocks
            stop = len(windows) if last else full
            for start in range(0, stop, batch_size):
                w, f = windows[start : start + batch_size], flags[start : start + batch_size]
                yield w[:, :-1], np.where(f[:, 1:], w[:, 1:], -1)
            if not last and full < len(windows):
                carry = (windows[full:], flags[full:])


def cut_windows(
    hist: np.ndarray, ok: np.ndarray, max_len: int, newest_only: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One history's windows of max_len + 1 events, newest first, overlapping by one event:
    every event but the first is a target exactly once (what `make_training_windows` and
    `write_windows` both cut). `newest_only` stops after the newest window."""
    out = []
    end = len(hist)
    while end >= 2:
        start = max(0, end - (max_len + 1))
        out.append((hist[start:end], ok[start:end]))
        end = start + 1
        if start == 0 or newest_only:
            break
    return out


def pad_windows(
    rows: Sequence[tuple[np.ndarray, np.ndarray]], width: int
) -> tuple[np.ndarray, np.ndarray]:
    """`cut_windows` rows left-padded to `width`: (item positions int64, -1 = padding; target
    flags bool, False on padding)."""
    windows = np.full((len(rows), width), -1, dtype=np.int64)
    flags = np.zeros((len(rows), width), dtype=bool)
    for r, (hist, ok) in enumerate(rows):
        if len(hist):
            windows[r, width - len(hist) :] = hist
            flags[r, width - len(ok) :] = ok
    return windows, flags


def write_windows(
    events_path: Path,
    item_ids: Sequence[str],
    max_len: int,
    out_dir: Path,
    user_col: str = C.USER_ID,
    item_col: str = C.ITEM_ID,
    liked_col: str | None = C.POSITIVE,
    batch_rows: int = 1_000_000,
    progress: bool = False,
    newest_only: bool = False,
) -> WindowFile:
    """Stream `events_path` (each user's events together, oldest first) into a window file.

    `item_ids` gives each item's position (the catalogue's order). With `liked_col` None every
    event may be a target. `newest_only` writes each user's newest window alone (the counts
    still cover every event), as `make_training_windows` does with it. Raises if a user's
    events are not together or an item is unknown, naming the file: the windows would
    silently differ from the in-memory fit's otherwise.
    """
    events_path, out_dir = Path(events_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    positions = pl.DataFrame(
        {item_col: pl.Series(list(item_ids), dtype=pl.String), "_pos": np.arange(len(item_ids))}
    )
    counts = np.zeros(len(item_ids), dtype=np.int64)
    width = max_len + 1
    source = pq.ParquetFile(events_path)
    columns = [user_col, item_col] + ([liked_col] if liked_col else [])
    missing = [c for c in columns if c not in source.schema_arrow.names]
    if missing:
        raise ValueError(
            f"{events_path}: no column {missing[0]!r} (have {source.schema_arrow.names})"
        )
    done_users: set[str] = set()
    pending: pl.DataFrame | None = None  # the last user of a batch, who may go on in the next
    n = events = targets = 0
    tmp_items = out_dir / (_ITEMS_FILE + ".tmp")
    tmp_flags = out_dir / (_FLAGS_FILE + ".tmp")
    bar = tqdm(total=source.metadata.num_rows, desc="windows", unit="event", disable=not progress)
    with open(tmp_items, "wb") as items_out, open(tmp_flags, "wb") as flags_out:

        def flush(frame: pl.DataFrame) -> int:
            """Cut and append the windows of the complete users in `frame`; returns windows."""
            rows: list[tuple[np.ndarray, np.ndarray]] = []
            if len(frame) == 0:
                return 0
            pos = frame["_pos"].to_numpy()
            ok = frame["_liked"].to_numpy()
            users = frame[user_col].to_numpy()
            starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
            ends = np.r_[starts[1:], len(frame)]
            for s, e in zip(starts, ends, strict=True):
                user = users[s]
                if user in done_users:
                    raise ValueError(
                        f"{events_path}: the events of user {user!r} are not together "
                        "(write the file sorted or grouped by user)"
                    )
                done_users.add(user)
                rows.extend(cut_windows(pos[s:e], ok[s:e], max_len, newest_only))
            if not rows:
                return 0
            block, flags = pad_windows(rows, width)
            items_out.write(block.astype(np.int32).tobytes())
            flags_out.write(flags.astype(np.uint8).tobytes())
            nonlocal targets
            targets += int(flags[:, 1:].sum())
            return len(rows)

        for batch in source.iter_batches(batch_size=batch_rows, columns=columns):
            frame = pl.from_arrow(batch)
            frame = frame.select(
                pl.col(user_col).cast(pl.String),
                pl.col(item_col).cast(pl.String),
                (pl.col(liked_col).cast(pl.Boolean) if liked_col else pl.lit(True)).alias("_liked"),
            ).join(positions, on=item_col, how="left", maintain_order="left")
            unknown = frame.filter(pl.col("_pos").is_null())
            if len(unknown):
                raise ValueError(
                    f"{events_path}: item {unknown[item_col][0]!r} in column {item_col!r} is not "
                    f"in the catalogue ({len(unknown)} events in this batch)"
                )
            events += len(frame)
            liked_pos = frame.filter(pl.col("_liked"))["_pos"].to_numpy()
            counts += np.bincount(liked_pos, minlength=len(counts))
            if pending is not None:
                frame = pl.concat([pending, frame])
            users = frame[user_col].to_numpy()
            changes = np.flatnonzero(users[1:] != users[:-1])
            tail_start = int(changes[-1]) + 1 if len(changes) else 0
            n += flush(frame[:tail_start])
            pending = frame[tail_start:]
            bar.update(len(batch))
        if pending is not None and len(pending):
            n += flush(pending)
    bar.close()
    np.save(out_dir / "counts.npy", counts)
    header = {
        "n": n,
        "width": width,
        "events": events,
        "users": len(done_users),
        "targets": targets,
    }
    os.replace(tmp_items, out_dir / _ITEMS_FILE)
    os.replace(tmp_flags, out_dir / _FLAGS_FILE)
    (out_dir / _HEADER).write_text(json.dumps(header))
    return WindowFile(out_dir, n, width, counts, events, len(done_users), targets)
