"""The nightly refresh at scale: index build, top-20 for every user, atomic publish.

    python benchmarks/scale.py [--users 10000,100000,1000000] [--items 1000000]
                               [--events 50000000] [--workdir DIR]

Synthetic model vectors of the served model's width (the default recipe: two members of
dim + 1 columns each = 130), clustered like a trained model's: items around 2,000 topic
centres, each user a mix of one to three topics with ~50 seen items of those topics. For each
user count: the index `index.kind = auto` chooses for the catalogue (its depth tuned to
`index.target_recall` on 2,000 users against exact search), every user's top-20 through the
refresh's ranking path (search, seen items dropped, tail-aware re-ranking of 200 candidates)
in blocks, the atomic publish into the recommendation store, wall time and peak memory, and
recall@20 of the published lists against the same path over an exact index on a 10,000-user
sample. Reasons and labels, which the real refresh adds per row, are not computed here.

Then the cleaning stage on `--events` synthetic raw events (text columns, as a file arrives:
~50 per user over the 1 M users, 1 M items, 1 % defects of every kind) in a Parquet file,
cleaned in user partitions (`tailor.data.partitioned`) in a child process whose peak memory is
reported, beside cleaning a tenth of the events at once (`clean_interactions`) for comparison;
then the whole data preparation of a run on the same file (`prepare_data` with
`data.partition_events = --part-events`: cleaning, the cold-item hold-out, the time split and
the files every later stage reads), also in a child process. `--events 0` skips these;
`--users ""` runs only them.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOPICS = 2000
NOISE = 0.6  # per-dimension noise around a topic centre (centres are unit-variance)
SEEN = 50
K = 20
BLOCK = 50_000
RECALL_SAMPLE = 10_000


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def served_width() -> int:
    from tailor.settings import TrainSettings

    s = TrainSettings()
    members = 2 if s.refit and s.ensemble else 1
    return members * (s.dim + int(s.text_view_weight > 0))


def synthetic_items(n: int, d: int, rng: np.random.Generator):
    centres = rng.normal(size=(TOPICS, d)).astype(np.float32)
    topic = rng.integers(0, TOPICS, n)
    items = centres[topic] + NOISE * rng.normal(size=(n, d)).astype(np.float32)
    return centres, topic, items


def synthetic_users(n: int, centres, item_topic, rng: np.random.Generator):
    """Users as a mix of 1-3 topics, and their seen items drawn from those topics."""
    d = centres.shape[1]
    picks = rng.integers(0, TOPICS, (n, 3))
    weights = rng.dirichlet(np.ones(3), n).astype(np.float32)
    weights[rng.random(n) < 0.4, 1:] = 0.0  # 40 % of users like a single topic
    weights /= weights.sum(axis=1, keepdims=True)
    users = np.einsum("nt,ntd->nd", weights, centres[picks])
    users += NOISE * rng.normal(size=(n, d)).astype(np.float32)
    by_topic = np.argsort(item_topic, kind="stable")
    starts = np.searchsorted(item_topic[by_topic], np.arange(TOPICS))
    sizes = np.bincount(item_topic, minlength=TOPICS)
    # Each seen item's topic is one of the user's, drawn by the user's weights.
    cum = weights.cumsum(axis=1)
    which = np.minimum((rng.random((n, SEEN, 1)) > cum[:, None, :]).sum(axis=2), 2)
    chosen = np.take_along_axis(picks, which, axis=1)
    offsets = (rng.random((n, SEEN)) * np.maximum(sizes[chosen], 1)).astype(np.int64)
    seen = by_topic[np.minimum(starts[chosen] + offsets, len(by_topic) - 1)]
    return users.astype(np.float32), seen


def write_raw_events(path: Path, n: int, n_users: int, n_items: int, seed: int = 0) -> None:
    """`n` raw events as text, in chunks (never all in memory): 1 % with a defect."""
    import polars as pl
    import pyarrow.parquet as pq

    from tailor import columns as C

    rng = np.random.default_rng(seed)
    writer = None
    chunk = 5_000_000
    try:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            frame = pl.DataFrame(
                {
                    C.USER_ID: rng.integers(0, n_users, m),
                    C.ITEM_ID: rng.zipf(1.2, m) % n_items,
                    C.TIMESTAMP: rng.integers(1_500_000_000, 1_700_000_000, m),
                    C.WEIGHT: rng.integers(1, 6, m),
                }
            ).select(
                ("u" + pl.col(C.USER_ID).cast(pl.Utf8)).alias(C.USER_ID),
                ("i" + pl.col(C.ITEM_ID).cast(pl.Utf8)).alias(C.ITEM_ID),
                pl.col(C.TIMESTAMP).cast(pl.Utf8),
                pl.col(C.WEIGHT).cast(pl.Utf8),
            )
            bad = pl.Series(rng.random(m) < 0.01)
            kind = pl.Series(rng.integers(0, 4, m))
            frame = frame.with_columns(
                pl.when(bad & (kind == 0))
                .then(pl.lit(" "))
                .otherwise(pl.col(C.USER_ID))
                .alias(C.USER_ID),
                pl.when(bad & (kind == 1))
                .then(pl.lit("i-unknown"))
                .otherwise(pl.col(C.ITEM_ID))
                .alias(C.ITEM_ID),
                pl.when(bad & (kind == 2))
                .then(pl.lit("yesterday"))
                .otherwise(pl.col(C.TIMESTAMP))
                .alias(C.TIMESTAMP),
                pl.when(bad & (kind == 3))
                .then(pl.lit("-2"))
                .otherwise(pl.col(C.WEIGHT))
                .alias(C.WEIGHT),
            )
            table = frame.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def prepare_in_parts(path: str, n_items: int, out: str, part_events: int) -> tuple[int, int]:
    """`prepare_data` as a run does it, the events in user partitions: (rows in, rows kept)."""
    import polars as pl

    from tailor.settings import load_settings
    from tailor.stages.data import prepare_data

    items = Path(out) / "items.parquet"
    items.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"Thing {i}" for i in range(n_items)],
        }
    ).write_parquet(items)
    settings = load_settings(
        workdir=Path(out) / "work",
        data={
            "source": "files",
            "interactions_path": path,
            "items_path": str(items),
            "columns": {"weight": "weight"},
            "text_template": "{title}",
            "partition_events": part_events,
        },
    )
    prepared = prepare_data(settings, Path(out) / "data")
    report = prepared.report["interactions"]
    return report["rows_in"], report["rows_out"]


def clean_child(path: str, n_items: int, mode: str, out: str, part_events: int) -> None:
    """Runs in its own process, so its peak memory is the stage's alone; prints one JSON line."""
    import json

    import polars as pl

    from tailor.data.clean import clean_interactions
    from tailor.data.partitioned import clean_interactions_partitioned

    known = pl.Series([f"i{i}" for i in range(n_items)])
    began = time.perf_counter()
    if mode == "partitioned":
        result = clean_interactions_partitioned(Path(path), Path(out), known)
        rows_in, rows_out = result.rows_in, result.rows_out
    elif mode == "prepare":
        rows_in, rows_out = prepare_in_parts(path, n_items, out, part_events)
    else:
        raw = pl.read_parquet(path)
        clean, _ = clean_interactions(raw, path, known, None)
        rows_in, rows_out = raw.height, clean.height
    seconds = time.perf_counter() - began
    print(
        json.dumps(
            {
                "rows_in": rows_in,
                "rows_out": rows_out,
                "seconds": seconds,
                "peak_gib": peak_rss_gib(),
            }
        )
    )


def cleaning_rows(
    events: int, n_users: int, n_items: int, workdir: Path, part_events: int
) -> list[dict]:
    import json
    import subprocess

    rows = []
    for label, n, mode in (
        ("cleaning all at once (clean_interactions)", events // 10, "whole"),
        ("cleaning in user partitions (tailor.data.partitioned)", events, "partitioned"),
        ("whole data preparation in user partitions (prepare_data)", events, "prepare"),
    ):
        path = workdir / f"events-{n}.parquet"
        began = time.perf_counter()
        if not path.exists():  # the last two rows read one file
            write_raw_events(path, n, n_users, n_items)
            took = time.perf_counter() - began
            print(f"  {n:,} raw events written in {took:.0f} s", file=sys.stderr)
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--clean-child",
                str(path),
                "--items",
                str(n_items),
                "--mode",
                mode,
                "--workdir",
                str(workdir / f"{mode}-{n}"),
                "--part-events",
                str(part_events),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"cleaning {path} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"how": label, "file_mb": path.stat().st_size / 2**20, **result})
        if mode != "partitioned":
            path.unlink()
        print(f"  {label}: {result}", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="10000,100000,1000000")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=50_000_000)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument(
        "--part-events", type=int, default=2_000_000, help="data.partition_events of the run"
    )
    parser.add_argument("--clean-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="partitioned", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clean_child:
        clean_child(args.clean_child, args.items, args.mode, args.workdir, args.part_events)
        return 0

    counts = [int(x) for x in args.users.split(",") if x.strip()]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tailor-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if counts:
        refresh_table(args, counts, workdir)
    if args.events:
        n_users = max(counts or [1_000_000])
        rows = cleaning_rows(args.events, n_users, args.items, workdir, args.part_events)
        print("\n| stage | events | file MB | rows kept | seconds | peak memory GiB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(
                f"| {r['how']} | {r['rows_in']:,} | {r['file_mb']:.0f} | {r['rows_out']:,} | "
                f"{r['seconds']:.0f} | {r['peak_gib']:.2f} |"
            )
    return 0


def refresh_table(args, counts: list[int], workdir: Path) -> None:
    import polars as pl

    from tailor import columns as C
    from tailor.models.index import build_index, choose_index_kind, tune_search_depth
    from tailor.ranking.rank import Ranked, RankPolicy, rank_index
    from tailor.ranking.tail import head_mask
    from tailor.serving.store import RecommendationStore
    from tailor.settings import IndexSettings, RerankSettings

    rng = np.random.default_rng(0)
    d = served_width()
    settings, rerank = IndexSettings(), RerankSettings()
    print(f"{args.items:,} items of width {d}; users {counts}", file=sys.stderr)

    started = time.perf_counter()
    centres, item_topic, items = synthetic_items(args.items, d, rng)
    popularity = rng.zipf(1.3, args.items).astype(np.int64)
    is_tail = ~head_mask(popularity, 0.2)
    policy = RankPolicy(K, rerank.strength, rerank.candidates, is_tail)
    users, seen = synthetic_users(max(counts), centres, item_topic, rng)
    generated = time.perf_counter() - started

    started = time.perf_counter()
    index = build_index(items, settings, seed=0)
    build_seconds = time.perf_counter() - started
    kind = choose_index_kind(args.items, settings)
    tune = rng.choice(len(users), settings.tune_queries, replace=False)
    depth = tune_search_depth(index, items, users[tune], settings.tune_k, settings.target_recall)
    build_seconds += depth.seconds
    print(
        f"index {kind}: built and tuned in {build_seconds:.0f} s, {depth.values}, "
        f"recall@{depth.k} {depth.recall:.4f}",
        file=sys.stderr,
    )

    exact = None
    rows = []
    for n in counts:
        store = RecommendationStore(f"sqlite:///{workdir / f'store-{n}.db'}")
        began = time.perf_counter()
        parts = []
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            excluded = [set(s.tolist()) for s in seen[start:stop]]
            parts.append(rank_index(index, users[start:stop], excluded, policy))
        lists = Ranked.concat(parts, K)
        scored = time.perf_counter() - began
        began_publish = time.perf_counter()
        user_col = np.repeat(np.arange(n), K)
        flat = lists.items.ravel()
        keep = flat >= 0
        frame = pl.DataFrame(
            {
                C.USER_ID: pl.Series(user_col[keep]).cast(pl.Utf8),
                C.ITEM_ID: pl.Series(flat[keep]).cast(pl.Utf8),
                C.RANK: pl.Series(np.tile(np.arange(1, K + 1), n)[keep], dtype=pl.Int32),
                C.SCORE: pl.Series(lists.scores.ravel()[keep], dtype=pl.Float64),
            }
        ).with_columns(pl.lit(None, dtype=pl.Utf8).alias(C.REASON_TEXT))
        frame = frame.with_columns(pl.col(C.ITEM_ID).alias(C.LABEL))
        store.publish(frame, "scale-benchmark")
        published = time.perf_counter() - began_publish
        wall = time.perf_counter() - began
        # Recall of the published lists against the same path over exact search.
        sample = np.sort(rng.choice(n, min(RECALL_SAMPLE, n), replace=False))
        if exact is None:
            import faiss

            exact = faiss.IndexFlatIP(d)
            exact.add(items)
        truth = rank_index(exact, users[sample], [set(seen[u].tolist()) for u in sample], policy)
        got, want = lists.items[sample], truth.items
        hits = [len(set(a[a >= 0]) & set(b[b >= 0])) for a, b in zip(got, want, strict=True)]
        recall = float(np.mean(hits) / K)
        rows.append(
            {
                "users": n,
                "items": args.items,
                "index": f"{kind} {depth.values}",
                "build_s": build_seconds,
                "top20_s": scored,
                "publish_s": published,
                "wall_s": wall,
                "peak_gib": peak_rss_gib(),
                "recall": recall,
            }
        )
        store.dispose()
        print(f"  {n:,} users: {wall:.0f} s, recall@{K} {recall:.4f}", file=sys.stderr)

    print(f"\nsynthetic vectors generated in {generated:.0f} s (not counted below)\n")
    print(
        "| users | items | index (tuned depth) | index build + tuning s | top-20 for every user s "
        "| atomic publish s | refresh wall s (top-20 + publish) | peak memory GiB | recall@20 vs "
        "exact (10k users) |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['users']:,} | {r['items']:,} | {r['index']} | {r['build_s']:.0f} | "
            f"{r['top20_s']:.0f} | {r['publish_s']:.0f} | {r['wall_s']:.0f} | "
            f"{r['peak_gib']:.2f} | {r['recall']:.4f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
