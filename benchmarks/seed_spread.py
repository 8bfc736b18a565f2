"""How much a run's test metrics move with the seed alone: the noise floor of a comparison.

    python benchmarks/seed_spread.py [--workdir .tailor] [--preset NAME] [--seeds 0,1,2]
                                     [--threads N]

Trains the default recipe's evaluation fit (`Exam.fit`: the one-cycle fit on train, the warm
refit on train + validation, their ensemble) once per seed on the workdir's data (prepared and
embedded as `tailor run` does, cached after the first time), and prints per seed the fit's
seconds and the test metrics of the model's own lists (no re-ranking), then the mean and the
standard deviation over seeds. Two runs with one seed give identical metrics; a code change
that only reorders floating-point sums (a faster kernel) moves a fit like another seed does,
so its effect on a metric reads against this spread, not against zero.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _workdir import load_workdir

METRICS = ("ndcg_at_10", "recall_at_20", "tail_recall_at_20", "coverage_at_20")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".tailor")
    parser.add_argument("--preset", default=None, help="e.g. tiny: synthetic data, seconds")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: auto)")
    args = parser.parse_args()

    from tailor.evaluation.compare import Exam
    from tailor.ranking.rank import rank_dense

    settings, vectors, hist = load_workdir(args.workdir, args.preset, "seed_spread")
    exam = Exam(hist, settings.eval)
    train = settings.train
    if args.threads:
        train = train.model_copy(update={"threads": args.threads})
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = []
    for seed in seeds:
        fitted = exam.fit(vectors, train, seed)
        tops = {"test": rank_dense(fitted.evaluated, exam.cases["test"][0], exam.policy(None))}
        found = exam.measure({split: ranked.items for split, ranked in tops.items()})
        rows.append([fitted.seconds] + [found[f"test_{m}"] for m in METRICS])
        print(f"seed {seed}: {fitted.seconds:.1f} s", file=sys.stderr)
    table = np.array(rows)
    print(f"\n{len(seeds)} seeds of the evaluation fit; test metrics of the model's own lists\n")
    print("| seed | fit s | " + " | ".join(METRICS) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in METRICS) + " |")
    for seed, row in zip(seeds, table, strict=True):
        print(f"| {seed} | {row[0]:.1f} | " + " | ".join(f"{v:.4f}" for v in row[1:]) + " |")
    mean, std = table.mean(0), table.std(0, ddof=1) if len(seeds) > 1 else np.zeros(len(rows[0]))
    print(f"| mean | {mean[0]:.1f} | " + " | ".join(f"{v:.4f}" for v in mean[1:]) + " |")
    print(f"| std | {std[0]:.1f} | " + " | ".join(f"{v:.4f}" for v in std[1:]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
