"""Fine-tuning at scale: windows in memory against windows streamed from the events file.

    python benchmarks/train_scale.py [--events 5000000,50000000] [--items 1000000]
                                     [--steps 300] [--workdir DIR]

Synthetic events (~50 per user, users = events / 50, items drawn with a long-tailed
popularity) written as the split writes them (one Parquet file, each user's events together,
oldest first; 80 % of them positives), and random unit text vectors of the encoder's width for
`--items` items. For each event count, each in its own process so its peak memory is its own:

- in memory: the histories read from the file and `SeqRecommender.fit` (windows cut in memory);
- from the file: `write_windows` (the file streamed batch by batch into a window file) and
  `SeqRecommender.fit_windows` (windows read back in a block shuffle).

Both train the default recipe with the sampled softmax (what `train.softmax = auto` picks above
`train.full_softmax_items`) for `--steps` steps, enough to time a step; the table gives the
preparation time, the time per 1,000 steps, an epoch extrapolated from it, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EVENTS_PER_USER = 50
TEXT_DIM = 384  # all-MiniLM-L6-v2


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_events(path: Path, n_events: int, n_items: int, seed: int = 0) -> None:
    """User-grouped events: user ids as integers, items by a Zipf-like popularity."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_users = max(1, n_events // EVENTS_PER_USER)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    cdf = np.cumsum(weights / weights.sum())
    per_chunk = 100_000
    writer = None
    try:
        for first in range(0, n_users, per_chunk):
            users = np.arange(first, min(n_users, first + per_chunk))
            lengths = rng.integers(EVENTS_PER_USER // 2, EVENTS_PER_USER * 3 // 2 + 1, len(users))
            user = np.repeat(users, lengths)
            item = np.searchsorted(cdf, rng.random(len(user)))
            table = pa.table(
                {
                    "user_id": user.astype(np.int64),
                    "item_id": np.minimum(item, n_items - 1).astype(np.int64),
                    "positive": rng.random(len(user)) < 0.8,
                }
            )
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def settings_for_scale():
    from tailor.settings import TrainSettings

    return TrainSettings(epochs=1, threads="auto", softmax="sampled")


def child(path: str, mode: str, n_items: int, steps: int, out: str) -> None:
    """One measurement in its own process; prints one JSON line."""
    import polars as pl

    from tailor.models.sequential import SeqRecommender
    from tailor.models.windows import write_windows

    rng = np.random.default_rng(1)
    text = rng.standard_normal((n_items, TEXT_DIM), dtype=np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    settings = settings_for_scale()
    model = SeqRecommender(text, settings, seed=0)
    began = time.perf_counter()
    if mode == "memory":
        frame = pl.read_parquet(path)
        bounds = np.flatnonzero(np.diff(frame["user_id"].to_numpy())) + 1
        histories = np.split(frame["item_id"].to_numpy(), bounds)
        liked = np.split(frame["positive"].to_numpy(), bounds)
        del frame
        prepared = time.perf_counter() - began
        report = model.fit(histories, seed=0, liked=liked, max_steps=steps)
        # What make_training_windows cut: ceil((length - 1) / max_len) per history.
        n_windows = sum(-(-max(len(h) - 1, 0) // settings.max_len) for h in histories)
    else:
        ids = [str(i) for i in range(n_items)]
        wf = write_windows(Path(path), ids, settings.max_len, Path(out) / "windows")
        prepared = time.perf_counter() - began
        report = model.fit_windows(wf, seed=0, max_steps=steps)
        n_windows = wf.n
    # Model creation and the first steps' warm-up are in `report.seconds`; per step is the
    # mean over the whole budget, a slight overestimate.
    per_step = report.seconds / max(report.steps, 1)
    epoch_steps = -(-n_windows // settings.batch_size)
    print(
        json.dumps(
            {
                "windows": n_windows,
                "prepare_s": prepared,
                "per_1000_steps_s": per_step * 1000,
                "epoch_min": per_step * epoch_steps / 60,
                "peak_gib": peak_rss_gib(),
                "steps": report.steps,
                "loss": report.losses[-1],
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="5000000,50000000")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode, args.items, args.steps, args.workdir)
        return 0

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tailor-train-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in [int(x) for x in args.events.split(",") if x.strip()]:
        path = workdir / f"events-{n}.parquet"
        began = time.perf_counter()
        write_events(path, n, args.items)
        print(f"{n:,} events written in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        for mode, label in (("memory", "in memory (fit)"), ("file", "from the file (fit_windows)")):
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(path),
                    "--mode",
                    mode,
                    "--items",
                    str(args.items),
                    "--steps",
                    str(args.steps),
                    "--workdir",
                    str(workdir / f"{mode}-{n}"),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                raise RuntimeError(f"{label} on {n:,} events failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {label}: {result}", file=sys.stderr)
            rows.append({"events": n, "how": label, **result})
        path.unlink()

    s = settings_for_scale()
    print(
        f"\n## Fine-tuning at {args.items:,} items (sampled softmax, {s.negatives} uniform "
        f"negatives{' + the batch targets' if s.in_batch_negatives else ''}, "
        f"batch {s.batch_size}, {args.steps} steps timed)\n"
    )
    print(
        "| events | windows | how | prepare s | s / 1,000 steps | one epoch min "
        "(extrapolated) | peak memory GiB |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['events']:,} | {r['windows']:,} | {r['how']} | {r['prepare_s']:.0f} | "
            f"{r['per_1000_steps_s']:.0f} | {r['epoch_min']:.0f} | {r['peak_gib']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
