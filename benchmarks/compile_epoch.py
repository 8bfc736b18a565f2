"""Fine-tuning epochs eager against `torch.compile` (issue: train five times faster).

    python benchmarks/compile_epoch.py [--workdir .tailor] [--epochs 4] [--preset tiny]

Trains the default recipe's network on the workdir's data (prepared and embedded as
`tailor run` does, cached after the first time) for a few epochs twice in one process: first
eager, then with the sequence encoder under `torch.compile(dynamic=True)` (batches change
shape: padding columns are cut per batch). Prints per mode the first epoch (the compile is
paid there), the mean of the later epochs, the whole fit, and each epoch's training loss.
"""

from __future__ import annotations

import argparse
import sys

from _workdir import load_workdir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".tailor")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--preset", default=None, help="e.g. tiny: synthetic data, seconds")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch pays the compile")

    import numpy as np
    import torch

    from tailor.models.sequential import SeqRecommender

    settings, vectors, hist = load_workdir(args.workdir, args.preset, "compile_epoch")
    update = {"epochs": args.epochs, "patience": None, "valid_every": 1}
    train = settings.train.model_copy(update=update)
    rows = []
    for mode in ("eager", "compiled"):
        rec = SeqRecommender(vectors, train)
        if mode == "compiled":
            rec.net.encode = torch.compile(rec.net.encode, dynamic=True)
        seconds: list[float] = []
        report = rec.fit(
            hist.train, settings.seed, valid_fn=_stopwatch(seconds), liked=hist.train_liked
        )
        epochs = np.diff([0.0, *seconds])
        rows.append((mode, epochs, report.seconds, report.losses, report.threads))
        print(f"{mode}: {report.seconds:.1f} s", file=sys.stderr)

    print(f"\n## {args.epochs} epochs of the default recipe, eager and compiled\n")
    print("| mode | first epoch s | later epochs, mean s | fit s | torch threads | losses |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for mode, epochs, total, losses, threads in rows:
        shown = ", ".join(f"{x:.4f}" for x in losses)
        print(
            f"| {mode} | {epochs[0]:.1f} | {epochs[1:].mean():.2f} | {total:.1f} | {threads} "
            f"| {shown} |"
        )
    return 0


def _stopwatch(seconds: list[float]):
    """A validation callback that only notes when each epoch ended (seconds since the first
    call's fit began, measured from the callback's creation) and scores nothing."""
    import time

    began = time.perf_counter()

    def tick(_model) -> float:
        seconds.append(time.perf_counter() - began)
        return 0.0

    return tick


if __name__ == "__main__":
    sys.exit(main())
