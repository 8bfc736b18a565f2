"""What the production fit gains over the evaluation fit, measured on a forward time split.

    python benchmarks/production_fit.py [--workdir DIR] [--cutoff 0.9] [--preset NAME]

The registered model is the production fit (every event, the epochs the evaluation fit chose);
every reported metric comes from the evaluation fit (hold-outs kept out). This measures what
the difference is worth where it matters, in the future: both fits are trained on the events
before a cut-off (the `--cutoff` quantile of event times), exactly as the train flow trains
them, and both are scored on every positive event after the cut-off, from everything the
user did before it (full ranking, history excluded, the served tail-aware re-ranking). Neither
fit saw any event after the cut-off. Paired bootstrap over users for the difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--cutoff", type=float, default=0.8, help="quantile of event times")
    parser.add_argument("--preset", default=None)
    args = parser.parse_args()

    from tailor import columns as C
    from tailor.data.load import load_clean
    from tailor.evaluation.compare import Exam, rank_vector_model
    from tailor.evaluation.metrics import paired_bootstrap, per_user_metric, ranking_metrics
    from tailor.models.sequential import load_recommender
    from tailor.settings import load_settings
    from tailor.stages.data import load_histories, prepare_data
    from tailor.stages.embed import embed_items
    from tailor.stages.train import train_production, train_recommender

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tailor-production-"))
    base = load_settings(preset=args.preset, workdir=workdir)
    clean = load_clean(base)
    threshold = base.data.positive_threshold
    events = clean.interactions
    stamps = events[C.TIMESTAMP]
    cutoff = stamps.sort()[int(args.cutoff * (len(stamps) - 1))]
    before, after = (
        events.filter(pl.col(C.TIMESTAMP) <= cutoff),
        events.filter(pl.col(C.TIMESTAMP) > cutoff),
    )

    # The events before the cut-off, as the user's own files: the train flow's stages read them.
    files = workdir / "before"
    files.mkdir(parents=True, exist_ok=True)
    before.with_columns(pl.col(C.TIMESTAMP).dt.strftime("%Y-%m-%dT%H:%M:%S%.f%:z")).with_columns(
        pl.col(C.WEIGHT).cast(pl.Utf8)
    ).select(C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.WEIGHT).write_parquet(files / "events.parquet")
    clean.items.select(C.ITEM_ID, C.TEXT, C.LABEL).rename(
        {C.TEXT: "body", C.LABEL: "name"}
    ).write_parquet(files / "items.parquet")
    settings = base.model_copy(
        update={
            "data": base.data.model_copy(
                update={
                    "source": "files",
                    "interactions_path": files / "events.parquet",
                    "items_path": files / "items.parquet",
                    "text_template": "{body}",
                    "label_template": "{name}",
                    "columns": base.data.columns.model_copy(update={"weight": C.WEIGHT}),
                    "positive_min_weight": threshold if threshold is not None else 0.0,
                }
            )
        }
    )
    out = workdir / "runs"
    started = time.perf_counter()
    prepared = prepare_data(settings, out / "data")
    embedded = embed_items(prepared.items, settings, progress=False)
    trained = train_recommender(prepared, embedded.vectors, settings, out / "evaluation_fit")
    evaluation_seconds = time.perf_counter() - started
    production = train_production(prepared, embedded.vectors, trained, settings, out / "production")
    print(
        f"cut-off {cutoff:%Y-%m-%d %H:%M}: {before.height} events before, {after.height} after; "
        f"evaluation fit {evaluation_seconds:.0f} s (best epoch {trained.best_epoch}), "
        f"production fit {production.seconds:.0f} s",
        file=sys.stderr,
    )

    # Forward cases: every positive event after the cut-off, from everything the user did
    # before it (events after the cut-off are input here, never training data).
    hist = load_histories(prepared)
    items = pl.read_parquet(prepared.items)[C.ITEM_ID].to_list()
    position = {item: p for p, item in enumerate(items)}
    cases = []
    for (user,), group in events.sort([C.USER_ID, C.TIMESTAMP]).group_by(C.USER_ID):
        seen: list[int] = []
        for item, when, weight in group.select(C.ITEM_ID, C.TIMESTAMP, C.WEIGHT).iter_rows():
            pos = position.get(item)
            if pos is None:
                continue
            liked = threshold is None or weight >= threshold
            if when > cutoff and liked and seen:
                cases.append((user, np.asarray(seen, dtype=np.int64), pos))
            seen.append(pos)
    cases.sort(key=lambda case: case[0])
    histories = [h for _, h, _ in cases]
    targets = np.array([t for _, _, t in cases], dtype=np.int64)
    case_users = np.array([u for u, _, _ in cases])
    cold = set(hist.cold_items.tolist())
    held_out = np.array([t in cold for t in targets])

    exam = Exam(hist, settings.eval)
    policy = exam.policy(settings.rerank)
    vectors = np.load(embedded.vectors)
    fits = {
        "evaluation fit (hold-outs kept out)": trained.model_dir,
        "production fit (every event)": production.model_dir,
    }
    tops, rows = {}, []
    for name, folder in fits.items():
        model = load_recommender(folder, vectors, device="cpu")
        top = rank_vector_model(model, histories, policy, settings.index, settings.seed).items
        tops[name] = top
        m = ranking_metrics(
            top,
            targets,
            exam.popularity,
            settings.eval.head_share,
            settings.eval.ks,
            len(hist.users),
        )
        held = per_user_metric(top[held_out], targets[held_out], "recall", 20).mean()
        rows.append((name, m, float(held) if held_out.any() else float("nan")))

    title = f"{len(cases)} positive events of {len(set(case_users))} users after the cut-off"
    print(f"\n## Production fit vs evaluation fit: {title}\n")
    print(
        "| fit | NDCG@10 | Recall@20 | tail-recall@20 | coverage@20 | "
        f"recall@20 on the {int(held_out.sum())} targets held out of the evaluation fit |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, m, held in rows:
        print(
            f"| {name} | {m['ndcg_at_10']:.4f} | {m['recall_at_20']:.4f} | "
            f"{m['tail_recall_at_20']:.4f} | {m['coverage_at_20']:.4f} | {held:.4f} |"
        )
    ev, prod = tops.values()
    # A user's cases are not independent: each user's mean is one draw of the bootstrap.
    users, user_of_case = np.unique(case_users, return_inverse=True)

    def per_user(values: np.ndarray) -> np.ndarray:
        return np.bincount(user_of_case, values) / np.bincount(user_of_case)

    print(
        f"\nPaired bootstrap over the {len(users)} users (production - evaluation, mean of each "
        "user's cases, 95 % interval):\n"
    )
    print("| metric | gain | 95 % interval |\n| --- | ---: | --- |")
    for metric, k in (("ndcg", 10), ("recall", 20)):
        gain, low, high = paired_bootstrap(
            per_user(per_user_metric(prod, targets, metric, k)),
            per_user(per_user_metric(ev, targets, metric, k)),
            n_resamples=settings.eval.bootstrap_resamples,
            seed=settings.seed,
        )
        print(f"| {metric}@{k} | {gain:+.4f} | [{low:+.4f}, {high:+.4f}] |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
