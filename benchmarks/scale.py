"""The nightly refresh at scale: index build, top-20 for every user, atomic publish.

    python benchmarks/scale.py [--users 10000,100000,1000000] [--items 1000000] [--workdir DIR]

Synthetic model vectors of the served model's width (the default recipe: two members of
dim + 1 columns each = 130), clustered like a trained model's: items around 2,000 topic
centres, each user a mix of one to three topics with ~50 seen items of those topics. For each
user count: the index `index.kind = auto` chooses for the catalogue (its depth tuned to
`index.target_recall` on 2,000 users against exact search), every user's top-20 through the
refresh's ranking path (search, seen items dropped, tail-aware re-ranking of 200 candidates)
in blocks, the atomic publish into the recommendation store, wall time and peak memory, and
recall@20 of the published lists against the same path over an exact index on a 10,000-user
sample. Reasons and labels, which the real refresh adds per row, are not computed here.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="10000,100000,1000000")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    args = parser.parse_args()

    import polars as pl

    from tailor import columns as C
    from tailor.models.index import build_index, choose_index_kind, tune_search_depth
    from tailor.ranking.rank import Ranked, RankPolicy, rank_index
    from tailor.ranking.tail import head_mask
    from tailor.serving.store import RecommendationStore
    from tailor.settings import IndexSettings, RerankSettings

    counts = [int(x) for x in args.users.split(",")]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tailor-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
