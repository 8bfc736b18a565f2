"""Time and memory of every stage on MovieLens-100K, and the quality the default run reaches.

    python benchmarks/pipeline.py [--preset NAME] [--epochs N] [--workdir DIR]

Runs the library's stage functions directly (no Prefect, no MLflow) so the figures are the
work itself; `time tailor run` measures the orchestrated whole. Prints markdown tables and
writes them as JSON next to the outputs.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    args = parser.parse_args()

    from tailor.models.bundle import Bundle
    from tailor.models.index import build_index, search_index
    from tailor.serving.batch import bundle_policy, compute_recommendations
    from tailor.serving.store import RecommendationStore
    from tailor.settings import IndexSettings, load_settings
    from tailor.stages import index as index_stage
    from tailor.stages.data import all_interactions, prepare_data
    from tailor.stages.embed import embed_items
    from tailor.stages.evaluate import evaluate_models
    from tailor.stages.register import bundle_model, lineage_of
    from tailor.stages.train import train_production, train_recommender

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tailor-bench-"))
    overrides: dict = {"workdir": workdir}
    if args.epochs:
        overrides["train"] = {"epochs": args.epochs}
    settings = load_settings(preset=args.preset, **overrides)
    out = workdir / "bench"
    rows: list[dict] = []

    def stage(name: str, fn, detail=lambda r: ""):
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        rows.append(
            {
                "stage": name,
                "seconds": round(seconds, 2),
                "peak_rss_mb": round(peak_rss_mb()),
                "detail": detail(result),
            }
        )
        print(f"  {name:<28} {seconds:8.2f} s   {detail(result)}", file=sys.stderr)
        return result

    prepared = stage(
        "load + clean + split",
        lambda: prepare_data(settings, out / "data"),
        lambda r: f"{r.n_interactions} events, {r.n_users} users, {r.n_items} items",
    )
    shutil.rmtree(settings.cache_dir / "embeddings", ignore_errors=True)
    embedded = stage(
        "embed (cold cache)",
        lambda: embed_items(prepared.items, settings, progress=False),
        lambda r: f"{r.n_embedded} texts embedded",
    )
    stage(
        "embed (warm cache)",
        lambda: embed_items(prepared.items, settings, progress=False),
        lambda r: f"{r.n_embedded} embedded, {r.n_reused} reused",
    )
    trained = stage(
        "train (evaluation fit)",
        lambda: train_recommender(prepared, embedded.vectors, settings, out, progress=False),
        lambda r: f"{len(r.losses)} epochs, best {r.best_epoch}",
    )
    stage(
        "build index",
        lambda: index_stage.build_index(
            trained.model_dir, embedded.vectors, settings.index, settings.seed, out, prepared
        ),
        lambda r: f"{r.kind}, recall@{r.depth.k} {r.depth.recall:.3f}",
    )
    evaluation = stage(
        f"evaluate (model + {len(settings.eval.baselines)} searched baselines, valid/test/cold)",
        lambda: evaluate_models(prepared, embedded.vectors, trained, settings, out),
    )
    production = stage(
        "train (production fit, every event)",
        lambda: train_production(
            prepared, embedded.vectors, trained, settings, out / "production", progress=False
        ),
        lambda r: f"{len(r.seeds)} x {r.epochs} epochs on {r.n_events} events",
    )
    production_index = index_stage.build_index(
        production.model_dir,
        embedded.vectors,
        settings.index,
        settings.seed,
        out / "production",
        prepared,
    ).path
    bundle_dir = bundle_model(
        prepared,
        embedded.vectors,
        production.model_dir,
        production_index,
        settings,
        out / "production",
        lineage=lineage_of(prepared, evaluation, "benchmark", "benchmark"),
    )
    bundle = Bundle(bundle_dir)
    interactions = all_interactions(prepared)
    policy = bundle_policy(bundle, settings.refresh.k, settings.rerank, settings.eval.head_share)
    recs = stage(
        f"refresh: top-{settings.refresh.k} for all users",
        lambda: compute_recommendations(bundle, interactions, policy),
        lambda r: f"{r.height} rows",
    )
    store = RecommendationStore(f"sqlite:///{workdir / 'bench-recs.db'}")
    stage(
        "publish to store (atomic)",
        lambda: store.publish(recs, "bench"),
        lambda r: f"{r.n_rows} rows",
    )
    users = store.users()
    started = time.perf_counter()
    for user in users[:500]:
        store.read(user)
    read_ms = (time.perf_counter() - started) / min(500, len(users)) * 1000
    store.dispose()

    # Index search latency on the real fine-tuned item vectors.
    vectors = bundle.item_vectors
    queries = bundle.model.user_vectors([np.asarray([i]) for i in range(min(500, len(vectors)))])
    search_rows = []
    for kind in ("flat", "hnsw"):
        index = build_index(vectors, IndexSettings(kind=kind))
        started = time.perf_counter()
        for q in queries:
            search_index(index, q, 20)
        per_query = (time.perf_counter() - started) / len(queries) * 1000
        search_rows.append({"index": kind, "ms_per_query": round(per_query, 3)})

    print("\n## Stages (MovieLens-100K, 2 CPU cores)\n")
    print("| stage | seconds | peak RSS MB | detail |\n| --- | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']:.2f} | {r['peak_rss_mb']} | {r['detail']} |")
    print(
        f"| store read, one user | {read_ms / 1000:.4f} | | {read_ms:.2f} ms mean over 500 users |"
    )
    print("\n## Index search, one query, k=20\n")
    print("| index | ms per query |\n| --- | ---: |")
    for r in search_rows:
        print(f"| {r['index']} | {r['ms_per_query']:.3f} |")
    print("\n## Quality (test split)\n")
    print(evaluation.table.read_text())
    result = {
        "stages": rows,
        "search": search_rows,
        "store_read_ms": read_ms,
        "metrics": evaluation.metrics,
    }
    (out / "benchmark.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\n(json: {out / 'benchmark.json'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
