"""Where the text pays: tailor against the id-only models as the training data thins.

    python benchmarks/sparse.py [--workdir .tailor] [--preset NAME] [--seeds 42,7,1]
                                [--shares 0.1,0.2,0.5,1] [--item-cap 5] [--min-events 3]
                                [--draws 3] [--no-ablation] [--jobs 2] [--out DIR] [--reuse]

The workdir's data (MovieLens-100K by default), prepared and embedded as `tailor run` does, and
the project's protocol unchanged (`tailor.evaluation.sparse`): only the training events thin,
never a validation or test event. Levels: each user's training events thinned to each
`--shares` (seeded draws, at least `--min-events` per user), and an item-sparse level (each
item's training events capped at `--item-cap`). Per level and seed, in the same run: tailor's
evaluation fit ranked as served (index, tail-aware re-ranking), SASRec-CE and GRU4Rec-CE (the
same recipe on ids), EASE (searched on validation) and text-cosine; with the ablation, the
model with its parts switched off (text only, ids + text, ...). Every model's test NDCG@10,
Recall@20 and tail-recall@20 is bootstrapped against SASRec-CE over users (95 %, paired).

Printed: per level the mean over seeds, the ratio to SASRec-CE of the means, and each seed's
NDCG@10 difference with its interval; the ablation's means; with `--draws`, cold-item recall
over that many item-clustered draws on every event (`tailor.evaluation.draws`); and the
targets. The plot (`sparse.png` in `--out`) draws the three metrics against the share of
training events kept. Each level-and-seed cell is one process (`--jobs` at a time, one torch
thread each, so two runs give the same figures); `--reuse` keeps cells already computed with
the same settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REFERENCE = "sasrec"
MODELS = ["tailor-seq", "sasrec", "gru4rec", "ease", "text-cosine"]
LABELS = {
    "tailor-seq": "tailor",
    "sasrec": "SASRec-CE",
    "gru4rec": "GRU4Rec-CE",
    "ease": "EASE",
    "text-cosine": "text-cosine",
}
# (metric, k, users): per-user values bootstrapped against the reference.
PAIRED = {
    "ndcg_at_10": ("ndcg", 10, "all"),
    "recall_at_20": ("recall", 20, "all"),
    "tail_recall_at_20": ("recall", 20, "tail"),
}
SHOWN = ["ndcg_at_10", "recall_at_20", "tail_recall_at_20", "coverage_at_20"]
TITLES = {
    "ndcg_at_10": "NDCG@10",
    "recall_at_20": "Recall@20",
    "tail_recall_at_20": "tail-recall@20",
    "coverage_at_20": "coverage@20",
}

_STATE: dict = {}


def _load(workdir: str, preset: str | None) -> None:
    """Each worker's data: settings, item vectors and the protocol's histories."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _workdir import load_workdir

    settings, vectors, hist = load_workdir(workdir, preset, "sparse")
    _STATE.update(settings=settings, vectors=vectors, hist=hist)


def level_name(level: float | str) -> str:
    return f"items <= {level[4:]}" if isinstance(level, str) else f"{level:.0%} of events"


def run_cell(level: float | str, seed: int, min_events: int, ablation: bool) -> dict:
    """One level and seed: every model's test metrics and its bootstrap against SASRec-CE."""
    from tailor.evaluation.ablation import ablate
    from tailor.evaluation.compare import Exam, evaluate_models
    from tailor.evaluation.metrics import paired_bootstrap, per_user_metric
    from tailor.evaluation.sparse import cap_item_events, thin_histories, training_events

    started = time.perf_counter()
    settings, vectors, full = _STATE["settings"], _STATE["vectors"], _STATE["hist"]
    if isinstance(level, str):
        hist = cap_item_events(full, int(level[4:]), seed)
    else:
        hist = thin_histories(full, level, min_events, seed)
    train = settings.train.model_copy(update={"threads": 1})
    wanted = [m for m in MODELS if m != "tailor-seq"]
    exam = Exam(hist, settings.eval.model_copy(update={"baselines": wanted}))
    fitted = exam.fit(vectors, train, seed)
    comparison = evaluate_models(
        exam,
        vectors,
        fitted.valid_model,
        fitted.evaluated,
        {},
        settings.rerank,
        settings.index,
        seed,
        train=train,
    )
    targets = hist.test_targets
    tail = exam.is_tail[targets]
    n = settings.eval.bootstrap_resamples

    def paired(tops: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {}
        for name, top in tops.items():
            out[name] = {}
            for key, (metric, k, users) in PAIRED.items():
                keep = tail if users == "tail" else np.ones(len(targets), dtype=bool)
                if not keep.any():
                    continue
                ours = per_user_metric(top[keep], targets[keep], metric, k)
                theirs = per_user_metric(tops[REFERENCE][keep], targets[keep], metric, k)
                out[name][key] = list(paired_bootstrap(ours, theirs, n, seed))
        return out

    cell = {
        "level": level,
        "seed": seed,
        "events": training_events(hist),
        "all_events": training_events(full),
        "items_trained": int(
            (np.bincount(np.concatenate(hist.train), minlength=hist.n_items) > 0).sum()
        ),
        "metrics": {m: comparison.metrics[m] for m in MODELS},
        "vs_reference": paired(comparison.test_tops),
    }
    if ablation:
        rows = ablate(exam, comparison, vectors, train, settings.rerank, settings.index, seed)
        cell["ablation"] = {
            row.name: {
                "metrics": row.metrics,
                "vs_ids": {k: list(v) for k, v in row.vs_ids.items()},
            }
            for row in rows
        }
    cell["seconds"] = time.perf_counter() - started
    return cell


def run_draws(count: int, seed: int) -> list[dict]:
    """Cold-item recall over `count` draws on every event, as `tailor run` measures it with
    `eval.draws` (each draw trains the production recipe on the rest)."""
    import polars as pl

    from tailor.evaluation.draws import cold_summary, run_draw
    from tailor.serving.encoder import TextVectors
    from tailor.stages.data import all_interactions, prepare_data

    settings, vectors = _STATE["settings"], _STATE["vectors"]
    settings = settings.model_copy(
        update={"train": settings.train.model_copy(update={"threads": 1})}
    )
    prepared = prepare_data(settings, settings.workdir.resolve() / "sparse" / "data")
    events = all_interactions(prepared)
    items = pl.read_parquet(prepared.items)
    users = pl.read_parquet(prepared.users) if prepared.users is not None else None
    texts = TextVectors(settings.embed, cache_size=0, cache_dir=settings.cache_dir)
    draws = [
        run_draw(
            events, items, users, vectors, settings, seed + d, settings.train.epochs, texts.encode
        )
        for d in range(count)
    ]
    return cold_summary(draws, settings.eval.bootstrap_resamples, seed)


def _cell_job(args: tuple) -> dict:
    return run_cell(*args)


def _init(workdir: str, preset: str | None) -> None:
    import torch

    torch.set_num_threads(1)
    _load(workdir, preset)


# ------------------------------------------------------------------ tables


def summarise(cells: list[dict]) -> dict[str, dict]:
    """Per level: each model's mean metrics over seeds and the per-seed intervals."""
    out: dict[str, dict] = {}
    for cell in cells:
        name = level_name(cell["level"])
        level = out.setdefault(
            name, {"level": cell["level"], "cells": [], "events": [], "all_events": 0}
        )
        level["cells"].append(cell)
        level["events"].append(cell["events"])
        level["all_events"] = cell["all_events"]
    for level in out.values():
        level["mean"] = {
            model: {
                key: float(
                    np.mean(
                        [c["metrics"][model].get(f"test_{key}", np.nan) for c in level["cells"]]
                    )
                )
                for key in SHOWN
            }
            for model in MODELS
        }
        level["share"] = float(np.mean(level["events"])) / max(level["all_events"], 1)
    return out


def ratio(level: dict, model: str, key: str) -> float:
    ref = level["mean"][REFERENCE][key]
    return level["mean"][model][key] / ref if ref > 0 else float("inf")


def seeds_above(level: dict, model: str, key: str = "ndcg_at_10") -> tuple[int, int]:
    """(seeds whose interval against SASRec-CE is above 0, seeds whose interval is below 0)."""
    intervals = [c["vs_reference"][model].get(key) for c in level["cells"]]
    intervals = [i for i in intervals if i is not None]
    return sum(i[1] > 0 for i in intervals), sum(i[2] < 0 for i in intervals)


def print_tables(levels: dict[str, dict], ablation: bool) -> None:
    seeds = [c["seed"] for c in next(iter(levels.values()))["cells"]]
    print(f"\n## Mean over seeds {', '.join(map(str, seeds))}; x SASRec-CE = ratio of the means\n")
    head = " | ".join(TITLES[k] for k in SHOWN)
    extra = "NDCG@10 x SASRec | tail-rec@20 x SASRec | NDCG@10 vs SASRec per seed, 95 %"
    print(f"| data | model | {head} | {extra} |")
    print("| --- | --- | " + " | ".join("---:" for _ in SHOWN) + " | ---: | ---: | --- |")
    for name, level in levels.items():
        label = f"{name} ({level['share']:.0%} kept)" if isinstance(level["level"], str) else name
        for model in MODELS:
            cells = " | ".join(f"{level['mean'][model][k]:.4f}" for k in SHOWN)
            per_seed = ""
            if model != REFERENCE:
                parts = []
                for c in level["cells"]:
                    gain, low, high = c["vs_reference"][model]["ndcg_at_10"]
                    parts.append(f"{gain:+.4f} [{low:+.4f}, {high:+.4f}]")
                per_seed = "; ".join(parts)
            print(
                f"| {label} | {LABELS[model]} | {cells} | {ratio(level, model, 'ndcg_at_10'):.2f}x "
                f"| {ratio(level, model, 'tail_recall_at_20'):.2f}x | {per_seed} |"
            )
    if not ablation:
        return
    print("\n## Ablation: mean over seeds (every row the same recipe, ranked as served)\n")
    print(f"| data | model | {head} | NDCG@10 vs ids only per seed, 95 % |")
    print("| --- | --- | " + " | ".join("---:" for _ in SHOWN) + " | --- |")
    for name, level in levels.items():
        rows = level["cells"][0].get("ablation", {})
        for row in rows:
            values = [
                np.mean(
                    [c["ablation"][row]["metrics"].get(f"test_{k}", np.nan) for c in level["cells"]]
                )
                for k in SHOWN
            ]
            parts = []
            for c in level["cells"]:
                gain = c["ablation"][row]["vs_ids"].get("ndcg_at_10")
                if gain and not row.startswith("ids only"):
                    parts.append(f"{gain[0]:+.4f} [{gain[1]:+.4f}, {gain[2]:+.4f}]")
            cells = " | ".join(f"{v:.4f}" for v in values)
            print(f"| {name} | {row} | {cells} | {'; '.join(parts)} |")


def targets(levels: dict[str, dict], cold: list[dict] | None) -> list[tuple[str, str, str, bool]]:
    """(target, required, measured, met) for the claims this benchmark backs."""
    rows = []

    def ndcg_row(name: str, level: dict, need: float) -> None:
        r = ratio(level, "tailor-seq", "ndcg_at_10")
        up, _ = seeds_above(level, "tailor-seq")
        n = len(level["cells"])
        measured = f"{r:.2f}x; interval above 0 in {up} of {n} seeds"
        rows.append(
            (
                f"NDCG@10 with {name}",
                f">= {need:.2f}x SASRec-CE, above 0 in 2 of 3",
                measured,
                r >= need and up >= min(2, n),
            )
        )

    for name, level in levels.items():
        share = level["level"]
        if share == 0.2:
            ndcg_row(name, level, 1.15)
        elif share == 0.1:
            ndcg_row(name, level, 1.2)
        elif share == 1:
            _, down = seeds_above(level, "tailor-seq")
            r = ratio(level, "tailor-seq", "ndcg_at_10")
            rows.append(
                (
                    f"NDCG@10 with {name}",
                    "no significant loss against SASRec-CE",
                    f"{r:.2f}x; interval below 0 in {down} of {len(level['cells'])} seeds",
                    down == 0,
                )
            )
            t = ratio(level, "tailor-seq", "tail_recall_at_20")
            rows.append(
                (f"tail-recall@20 with {name}", ">= 1.30x SASRec-CE", f"{t:.2f}x", t >= 1.3)
            )
        elif isinstance(share, str):
            t = ratio(level, "tailor-seq", "tail_recall_at_20")
            rows.append((f"tail-recall@20, {name}", ">= 1.50x SASRec-CE", f"{t:.2f}x", t >= 1.5))
    if cold:
        pooled = cold[-1]
        r = pooled["tailor-seq"] / max(pooled["text-cosine"], 1e-12)
        measured = (
            f"{r:.2f}x ({pooled['tailor-seq']:.4f} vs {pooled['text-cosine']:.4f}), gain "
            f"[{pooled['gain_low']:+.4f}, {pooled['gain_high']:+.4f}] over {pooled['cases']} cases"
        )
        rows.append(
            ("cold-item recall@20, " + pooled["draw"], ">= 1.50x text-cosine", measured, r >= 1.5)
        )
    return rows


def plot(levels: dict[str, dict], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    keys = ["ndcg_at_10", "recall_at_20", "tail_recall_at_20"]
    user_levels = sorted(
        (lv for lv in levels.values() if not isinstance(lv["level"], str)),
        key=lambda lv: lv["share"],
    )
    item_levels = [lv for lv in levels.values() if isinstance(lv["level"], str)]
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for j, model in enumerate(MODELS):
            color = f"C{j}"
            x = [100 * lv["share"] for lv in user_levels]
            y = [lv["mean"][model][key] for lv in user_levels]
            spread = [
                [
                    np.min([c["metrics"][model].get(f"test_{key}", np.nan) for c in lv["cells"]])
                    for lv in user_levels
                ],
                [
                    np.max([c["metrics"][model].get(f"test_{key}", np.nan) for c in lv["cells"]])
                    for lv in user_levels
                ],
            ]
            # The mean of equal values can land a rounding error outside their range.
            err = np.clip([np.subtract(y, spread[0]), np.subtract(spread[1], y)], 0, None)
            ax.errorbar(x, y, yerr=err, marker="o", color=color, capsize=3, label=LABELS[model])
            for lv in item_levels:
                ax.plot(
                    100 * lv["share"],
                    lv["mean"][model][key],
                    marker="s",
                    mfc="none",
                    color=color,
                    linestyle="none",
                )
        if all("ids + text" in lv["cells"][0].get("ablation", {}) for lv in user_levels):
            # The ablation's row without the text view's loss: what that loss costs.
            y = [
                np.mean(
                    [c["ablation"]["ids + text"]["metrics"][f"test_{key}"] for c in lv["cells"]]
                )
                for lv in user_levels
            ]
            x = [100 * lv["share"] for lv in user_levels]
            ax.plot(x, y, linestyle="--", color="C0", alpha=0.6, label="tailor without text view")
        ax.set_xscale("log")
        ax.set_xticks([10, 20, 50, 100], ["10", "20", "50", "100"])
        ax.set_xlabel("% of training events kept (squares: items capped)")
        ax.set_title(f"{TITLES[key]}: mean, bars min-max over seeds")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".tailor")
    parser.add_argument("--preset", default=None, help="e.g. tiny: synthetic data, seconds")
    parser.add_argument("--seeds", default="42,7,1")
    parser.add_argument("--shares", default="0.1,0.2,0.5,1")
    parser.add_argument("--item-cap", type=int, default=5, help="0 = no item-sparse level")
    parser.add_argument("--min-events", type=int, default=3)
    parser.add_argument("--draws", type=int, default=3, help="cold-item draws (0 = none)")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None, help="default: <workdir>/sparse")
    parser.add_argument("--reuse", action="store_true", help="keep cells already computed")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    levels: list[float | str] = [float(s) for s in args.shares.split(",") if s.strip()]
    if args.item_cap:
        levels.append(f"cap-{args.item_cap}")
    out = Path(args.out or Path(args.workdir) / "sparse")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    ablation = not args.no_ablation
    _init(args.workdir, args.preset)  # prepares and embeds once, before the workers read it
    spec = {"preset": args.preset, "min_events": args.min_events, "ablation": ablation}
    started = time.perf_counter()
    todo, cells = [], {}
    for level in levels:
        for seed in seeds:
            path = out / "cells" / f"{level}-{seed}.json"
            if args.reuse and path.is_file() and json.loads(path.read_text()).get("spec") == spec:
                cells[(level, seed)] = json.loads(path.read_text())
            else:
                todo.append((level, seed))
    context = get_context("spawn")
    with ProcessPoolExecutor(args.jobs, context, _init, (args.workdir, args.preset)) as pool:
        jobs = {
            pool.submit(_cell_job, (lv, sd, args.min_events, ablation)): (lv, sd) for lv, sd in todo
        }
        draws = pool.submit(run_draws, args.draws, seeds[0]) if args.draws else None
        for job, key in jobs.items():
            cell = job.result()
            cell["spec"] = spec
            (out / "cells" / f"{key[0]}-{key[1]}.json").write_text(json.dumps(cell))
            cells[key] = cell
            print(f"{level_name(key[0])}, seed {key[1]}: {cell['seconds']:.0f} s", file=sys.stderr)
        cold = draws.result() if draws else None
    ordered = [cells[(lv, sd)] for lv in levels for sd in seeds]
    summary = summarise(ordered)
    print_tables(summary, ablation)
    if cold:
        print(
            f"\n## Cold-item recall@20 over {args.draws} draws on every event (items resampled)\n"
        )
        print("| draw | cases | items | tailor | 95 % | text-cosine | gain, 95 % |")
        print("| --- | ---: | ---: | ---: | --- | ---: | --- |")
        for row in cold:
            print(
                f"| {row['draw']} | {row['cases']} | {row['items']} | {row['tailor-seq']:.4f} "
                f"| [{row['low']:.4f}, {row['high']:.4f}] | {row['text-cosine']:.4f} "
                f"| {row['gain']:+.4f} [{row['gain_low']:+.4f}, {row['gain_high']:+.4f}] |"
            )
    print("\n## Targets\n")
    print("| target | required | measured | |")
    print("| --- | --- | --- | --- |")
    for target, required, measured, met in targets(summary, cold):
        print(f"| {target} | {required} | {measured} | {'met' if met else '**not met**'} |")
    (out / "sparse.json").write_text(json.dumps({"cells": ordered, "cold": cold}, default=float))
    figure = plot(summary, out / "sparse.png")
    print(f"\nplot: {figure}; {time.perf_counter() - started:.0f} s in all", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
