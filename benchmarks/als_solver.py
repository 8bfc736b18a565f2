"""ALS's two solvers side by side: exact per-row solves against conjugate-gradient steps.

    python benchmarks/als_solver.py [--workdir .tailor] [--preset NAME] [--cg-steps 3,6]

Runs the evaluation's ALS grid search (`DEFAULT_GRIDS["als"]`: each grid point fitted on the
training positives and scored on the validation event, then the best refitted on train +
validation and scored on test) once per solver, on the workdir's data (prepared as `tailor run`
does, cached after the first time), in one process one after the other. Prints per solver the
grid's seconds, its ratio to the exact solver's, every grid point's validation NDCG@10, the
point chosen and its test metrics.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

METRICS = ("ndcg_at_10", "recall_at_20", "tail_recall_at_20", "coverage_at_20")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".tailor")
    parser.add_argument("--preset", default=None, help="e.g. tiny: synthetic data, seconds")
    parser.add_argument("--cg-steps", default="3", help="comma-separated CG step counts")
    args = parser.parse_args()

    import numpy as np

    from tailor.evaluation.compare import Exam
    from tailor.models.baselines import DEFAULT_GRIDS, fit_baseline
    from tailor.ranking.rank import rank_dense
    from tailor.settings import load_settings
    from tailor.stages.data import load_histories, prepare_data

    settings = load_settings(preset=args.preset, workdir=Path(args.workdir))
    prepared = prepare_data(settings, settings.workdir.resolve() / "als_solver" / "data")
    exam = Exam(load_histories(prepared), settings.eval)
    hist = exam.hist
    no_text = np.zeros((hist.n_items, 1), dtype=np.float32)  # ALS reads no text
    solvers = [None] + [int(s) for s in args.cg_steps.split(",") if s.strip()]
    rows = []
    for steps in solvers:
        began = time.perf_counter()
        trials = []
        for params in DEFAULT_GRIDS["als"]:
            params = {**params, "cg_steps": steps}
            rec = fit_baseline("als", params, hist.train_positives(), hist.n_items, no_text)
            top = rank_dense(rec, exam.cases["valid"][0], exam.policy(None)).items
            trials.append((exam.ndcg_at_10(top), params))
        seconds = time.perf_counter() - began
        _, best = max(trials, key=lambda t: t[0])
        refit = fit_baseline("als", best, hist.train_and_valid_positives(), hist.n_items, no_text)
        test = rank_dense(refit, exam.cases["test"][0], exam.policy(None)).items
        found = exam.measure({"test": test})
        rows.append((steps, seconds, [t[0] for t in trials], best, found))
        print(f"{_name(steps)}: grid {seconds:.1f} s", file=sys.stderr)

    exact = rows[0][1]
    grid = DEFAULT_GRIDS["als"]
    print(f"\n## ALS grid ({len(grid)} points) by solver, {hist.n_items} items\n")
    print("| solver | grid s | vs exact | " + " | ".join(f"test {m}" for m in METRICS) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in METRICS) + " |")
    for steps, seconds, _, _, found in rows:
        cells = " | ".join(f"{found[f'test_{m}']:.4f}" for m in METRICS)
        print(f"| {_name(steps)} | {seconds:.1f} | {exact / seconds:.2f}x | {cells} |")
    print("\nValidation NDCG@10 of each grid point (the chosen one starred):\n")
    print("| grid point | " + " | ".join(_name(r[0]) for r in rows) + " |")
    print("| --- | " + " | ".join("---:" for _ in rows) + " |")
    for i, point in enumerate(grid):
        label = ", ".join(f"{k}={v}" for k, v in point.items() if k != "cg_steps")
        cells = []
        for _, _, scores, best, _ in rows:
            chosen = all(best[k] == v for k, v in point.items() if k != "cg_steps")
            cells.append(f"{scores[i]:.4f}{' *' if chosen else ''}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


def _name(steps: int | None) -> str:
    return "exact (Cholesky per row)" if steps is None else f"CG, {steps} steps"


if __name__ == "__main__":
    sys.exit(main())
