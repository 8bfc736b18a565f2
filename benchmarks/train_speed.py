"""The old training recipe against the new default, side by side on the same data.

    python benchmarks/train_speed.py [--workdir .tailor] [--preset NAME] [--resamples 1000]
                                     [--try NAME:key=value,key=value ...] [--seeds 42,7,1]

Each recipe runs in its own child process, one after the other (so peak memory is its own and
neither shares the cores with the other), and fine-tunes exactly what the main job fine-tunes
for the served model: the evaluation fit (`train_recommender`: early-stopped or scheduled on
validation, refit on train + validation) and the production fit (`train_production`: every
event). Both read the data and item vectors of the workdir, prepared and embedded as
`tailor run` does (cached after the first time). The test lists come from the evaluation fit
through the served path (tuned index, tail-aware re-ranking), as `tailor run` reports them.

Printed: per recipe, seconds per epoch (per pass over the training windows, every fit's
windows counted: a warm refit or production fit on each user's newest window counts for the
share of a pass it trained on), epochs to the best validation score, the evaluation
and production fits' seconds, the total, peak memory, and the test metrics; then each metric's
difference (new - old) with a paired bootstrap 95 % interval: over users for NDCG@10, over
users with a tail target for tail-recall@20, over users (recomputing the catalogue share, the
interval moved by the resampling's bias) for coverage@20, and over whole cold items for
cold-item recall@20. A difference is significantly worse when its whole interval lies below 0.

`--try` adds recipes to compare (train settings on top of the default), e.g.
`--try b256:batch_size=256,learning_rate=0.006`.

`--seeds` repeats the whole comparison per seed (the seed draws the held-out items, orders
same-second events and seeds every fit): the old recipe's cost is mostly where its early
stopping lands, which moves with the seed, so one seed's ratio is one draw of it. With more
than one seed a last table gives each recipe's fine-tune seconds per seed, their mean, and the
ratio of the means.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OLD, NEW = "old (early-stopped)", "new default"


def parse_try(text: str) -> tuple[str, dict[str, str]]:
    name, _, pairs = text.partition(":")
    changes = {}
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        try:
            changes[key] = json.loads(value)  # numbers, true/false, null
        except json.JSONDecodeError:
            changes[key] = value  # words: one-cycle, fp32
    return name, changes


def recipe_settings(settings, recipe: str, changes: dict, old_epochs: int | None = None):
    """The train settings of a recipe: the old one (preset `early-stopped`) or the default,
    with `changes` on top."""
    from tailor.settings import PRESETS

    train = settings.train
    if recipe == "old":
        train = train.model_copy(update=PRESETS["early-stopped"]["train"])
        if old_epochs:
            train = train.model_copy(update={"epochs": old_epochs})
    return type(train).model_validate({**train.model_dump(), **changes})


def run_child(
    workdir: Path, preset: str | None, train: dict, out: Path, reuse: bool, seed: int
) -> dict:
    """One recipe in a fresh process; returns its timings and writes its test lists."""
    spec = {"train": train, "out": str(out), "seed": seed}
    done = out / "result.json"
    if reuse and done.is_file() and json.loads(done.read_text()).get("spec") == spec:
        return json.loads(done.read_text())
    command = [
        sys.executable,
        __file__,
        "--child",
        json.dumps(spec),
        "--workdir",
        str(workdir),
    ]
    if preset:
        command += ["--preset", preset]
    subprocess.run(command, check=True)
    return json.loads((out / "result.json").read_text())


def child(spec: dict, workdir: Path, preset: str | None) -> None:
    from tailor.evaluation.compare import Exam, served_index
    from tailor.models.sequential import load_recommender, make_training_windows
    from tailor.ranking.rank import rank_histories
    from tailor.settings import load_settings
    from tailor.stages.data import load_histories, prepare_data
    from tailor.stages.embed import embed_items
    from tailor.stages.train import train_production, train_recommender

    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    settings = load_settings(preset=preset, workdir=workdir, seed=spec["seed"])
    train = type(settings.train).model_validate(spec["train"])
    settings = settings.model_copy(update={"train": train})
    prepared = prepare_data(settings, out.parent / "data")
    vectors = embed_items(prepared.items, settings, progress=False).vectors
    hist = load_histories(prepared)
    exam = Exam(hist, settings.eval)

    started = time.perf_counter()
    trained = train_recommender(prepared, vectors, settings, out / "eval", progress=False)
    evaluation_seconds = time.perf_counter() - started
    started = time.perf_counter()
    production = train_production(prepared, vectors, trained, settings, out / "prod", False)
    production_seconds = time.perf_counter() - started

    text_vectors = np.load(vectors)
    model = load_recommender(trained.model_dir, text_vectors)
    policy = exam.policy(settings.rerank)
    index = served_index(model, exam.cases["test"][0], settings.index, settings.seed)
    tops = {
        split: rank_histories(model, index, exam.cases[split][0], policy).items
        for split in ("test", "cold")
    }
    np.savez(out / "tops.npz", **tops)
    metrics = exam.measure(tops)
    scores = trained.valid_scores
    # Epochs in passes over the training windows: a refit or production fit on the newest
    # windows alone counts for the share of a pass it trained on.
    one_pass = len(make_training_windows(hist.train, train.max_len, hist.train_liked)[0])
    result = {
        "spec": spec,
        "epochs_run": len(trained.losses),
        "best_epoch": trained.valid_epochs[int(np.argmax(scores))] if scores else None,
        "epochs_total": (trained.windows + production.windows) / one_pass,
        "evaluation_seconds": evaluation_seconds,
        "production_seconds": production_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": metrics,
        "settings": train.model_dump(
            include={"epochs", "batch_size", "learning_rate", "schedule", "dropout", "refit_epochs"}
        ),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))


def coverage_bootstrap(a, b, n_items, k, resamples, seed):
    """Coverage@k difference (a - b) and its interval, resampling users for both lists."""
    rng = np.random.default_rng(seed)

    def coverage(top):
        return len(np.unique(top[:, :k][top[:, :k] >= 0])) / n_items

    diffs = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        diffs[r] = coverage(a[idx]) - coverage(b[idx])
    observed = coverage(a) - coverage(b)
    # A resample repeats users, which lowers both lists' coverage, not by the same amount:
    # the interval is moved by that bias so it is centred where the observed difference is.
    low, high = np.percentile(diffs, [2.5, 97.5]) + (observed - diffs.mean())
    return observed, float(low), float(high)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".tailor")
    parser.add_argument("--preset", default=None, help="e.g. tiny: synthetic data, seconds")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--try", dest="tries", action="append", default=[])
    parser.add_argument(
        "--old-epochs", type=int, default=None, help="cap the old recipe's epochs (quick checks)"
    )
    parser.add_argument("--skip-old", action="store_true", help="compare --try recipes only")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a recipe's stored result (same settings)"
    )
    parser.add_argument(
        "--seeds", default=None, help="comma-separated seeds, one comparison each (default: seed)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if args.child:
        child(json.loads(args.child), workdir, args.preset)
        return 0

    from tailor.settings import load_settings

    settings = load_settings(preset=args.preset, workdir=workdir)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [settings.seed]
    recipes = [] if args.skip_old else [(OLD, "old", {})]
    recipes.append((NEW, "new", {}))
    recipes += [(name, "new", changes) for name, changes in map(parse_try, args.tries)]
    totals: dict[str, list[float]] = {name: [] for name, _, _ in recipes}
    for seed in seeds:
        seeded = settings.model_copy(update={"seed": seed})
        # One seed keeps the folder of before, so --reuse finds earlier results.
        root = workdir.resolve() / "train-speed"
        if len(seeds) > 1:
            root = root / f"seed-{seed}"
        results = compare(seeded, recipes, root, args)
        for name, r in results.items():
            totals[name].append(r["evaluation_seconds"] + r["production_seconds"])
    if len(seeds) > 1:
        base = float(np.mean(totals[recipes[0][0]]))
        print(
            f"\nFine-tune seconds per seed ({', '.join(map(str, seeds))}), mean, ratio of means:\n"
        )
        print("| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | x first |")
        print("| --- | " + " | ".join("---:" for _ in seeds) + " | ---: | ---: |")
        for name, values in totals.items():
            cells = " | ".join(f"{v:.1f}" for v in values)
            mean = float(np.mean(values))
            print(f"| {name} | {cells} | {mean:.1f} | {base / mean:.1f}x |")
    return 0


def compare(settings, recipes, root: Path, args) -> dict[str, dict]:
    """Every recipe on `settings.seed`, each in its own process; prints the two tables."""
    from tailor.evaluation.compare import Exam
    from tailor.evaluation.metrics import clustered_bootstrap, paired_bootstrap, per_user_metric
    from tailor.stages.data import load_histories, prepare_data

    workdir = Path(args.workdir)
    results, tops = {}, {}
    for name, recipe, changes in recipes:
        print(
            f"training: {name} {changes or ''} (seed {settings.seed})", file=sys.stderr, flush=True
        )
        out = root / name.split()[0]
        train = recipe_settings(settings, recipe, changes, args.old_epochs)
        train = train.model_dump(mode="json")
        results[name] = run_child(workdir, args.preset, train, out, args.reuse, settings.seed)
        tops[name] = dict(np.load(out / "tops.npz"))

    hist = load_histories(prepare_data(settings, root / "data"))
    exam = Exam(hist, settings.eval)
    print(f"\n### seed {settings.seed}")
    print(
        "\n| recipe | s / epoch | epochs to best (ran) | evaluation fit s | production fit s "
        "| fine-tune s | x old | peak MB | NDCG@10 | tail-recall@20 | coverage@20 "
        "| cold recall@20 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = results[recipes[0][0]]
    base_total = base["evaluation_seconds"] + base["production_seconds"]
    for name, r in results.items():
        total = r["evaluation_seconds"] + r["production_seconds"]
        m = r["metrics"]
        print(
            f"| {name} | {total / r['epochs_total']:.2f} | {r['best_epoch']} ({r['epochs_run']})"
            f" | {r['evaluation_seconds']:.1f} | {r['production_seconds']:.1f} | {total:.1f} "
            f"| {base_total / total:.1f}x | {r['peak_rss_mb']:.0f} "
            f"| {m['test_ndcg_at_10']:.4f} | {m['test_tail_recall_at_20']:.4f} "
            f"| {m['test_coverage_at_20']:.4f} | {m['cold_recall_at_20']:.4f} |"
        )

    targets, cold = hist.test_targets, hist.cold_targets
    tail = exam.is_tail[targets]
    print(f"\nDifferences against {recipes[0][0]}, 95 % paired bootstrap ({args.resamples}):\n")
    print("| recipe | NDCG@10 | tail-recall@20 | coverage@20 | cold recall@20 |")
    print("| --- | --- | --- | --- | --- |")
    a = tops[recipes[0][0]]
    seed, n = settings.seed, args.resamples
    for name in list(results)[1:]:
        b = tops[name]
        cells = [
            paired_bootstrap(
                per_user_metric(b["test"], targets, "ndcg", 10),
                per_user_metric(a["test"], targets, "ndcg", 10),
                n,
                seed,
            ),
            paired_bootstrap(
                per_user_metric(b["test"][tail], targets[tail], "recall", 20),
                per_user_metric(a["test"][tail], targets[tail], "recall", 20),
                n,
                seed,
            ),
            coverage_bootstrap(b["test"], a["test"], hist.n_items, 20, n, seed),
            clustered_bootstrap(
                per_user_metric(b["cold"], cold, "recall", 20)
                - per_user_metric(a["cold"], cold, "recall", 20),
                cold,
                n,
                seed,
            ),
        ]
        text = [
            f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]{' worse' if hi < 0 else ''}" for d, lo, hi in cells
        ]
        print(f"| {name} | " + " | ".join(text) + " |")
    return results


if __name__ == "__main__":
    raise SystemExit(main())
