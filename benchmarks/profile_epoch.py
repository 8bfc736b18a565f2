"""Where an epoch of fine-tuning spends its time (issue: train five times faster).

    python benchmarks/profile_epoch.py [--workdir .tailor] [--epochs 2] [--preset tiny]

Trains today's default recipe on MovieLens-100K (the data and item vectors of the workdir,
prepared and embedded as `tailor run` does, cached after the first time) for a few epochs
under `torch.profiler`, then prints one table of where the time went, by part of the step:
the forward pass (attention and feed-forward), the full-softmax losses over the catalogue
(id view and text view), the backward pass, the optimiser, the per-epoch validation pass,
batch assembly, and the rest; and a second table of the heaviest operators by their own CPU
time. Wall seconds are of this machine at that moment; the shares are what to act on.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

from _workdir import load_workdir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".tailor")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--preset", default=None, help="e.g. tiny: synthetic data, seconds")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from tailor.evaluation.compare import Exam
    from tailor.models.sequential import SeqRecommender

    settings, vectors, hist = load_workdir(args.workdir, args.preset, "profile")
    exam = Exam(hist, settings.eval)
    train = settings.train.model_copy(update={"epochs": args.epochs, "patience": None})
    model = SeqRecommender(vectors, train, seed=settings.seed)
    print(
        f"{len(hist.train):,} users, {model.n_items:,} items, batch {train.batch_size}, "
        f"dim {train.dim}, {torch.get_num_threads()} torch threads",
        file=sys.stderr,
    )

    # Label the parts of a step without changing the training code: wrap what it calls.
    net = model.net
    wrapped = {
        "forward (encoder)": (net, "encode"),
        "softmax losses": (model, "_softmax_losses"),
        "item matrix": (net, "item_matrix"),
    }
    for label, (owner, name) in wrapped.items():
        real = getattr(owner, name)

        def labelled(*a, _real=real, _label=label, **k):
            with record_function(_label):
                return _real(*a, **k)

        setattr(owner, name, labelled)
    real_backward = torch.Tensor.backward

    def backward(self, *a, **k):
        with record_function("backward"):
            return real_backward(self, *a, **k)

    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        with record_function("optimiser"):
            return real_step(self, *a, **k)

    def validation(m):
        with record_function("validation pass"):
            return exam.validation_score(m)

    torch.Tensor.backward = backward  # type: ignore[method-assign]
    torch.optim.AdamW.step = step  # type: ignore[method-assign]
    started = time.perf_counter()
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.fit(hist.train, seed=settings.seed, valid_fn=validation, liked=hist.train_liked)
    finally:
        torch.Tensor.backward = real_backward  # type: ignore[method-assign]
        torch.optim.AdamW.step = real_step  # type: ignore[method-assign]
    wall = time.perf_counter() - started

    events = prof.key_averages()
    parts = defaultdict(float)
    for e in events:
        if e.key in (
            "forward (encoder)",
            "softmax losses",
            "item matrix",
            "backward",
            "optimiser",
            "validation pass",
        ):
            parts[e.key] += e.cpu_time_total / 1e6
    # The loss's own forward is inside "softmax losses"; the encoder's inside "forward".
    accounted = sum(parts.values())
    print(f"\n{args.epochs} epochs in {wall:.1f} s wall ({wall / args.epochs:.2f} s per epoch)\n")
    print("| part of the step | CPU s (all threads' wall, summed) | share of the epochs' wall |")
    print("| --- | ---: | ---: |")
    for key, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {key} | {seconds:.2f} | {seconds / wall:.0%} |")
    print(
        f"| rest (batch assembly, Python, bookkeeping) | {max(wall - accounted, 0):.2f} | "
        f"{max(wall - accounted, 0) / wall:.0%} |"
    )
    print("\n| operator | self CPU s | calls |")
    print("| --- | ---: | ---: |")
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    for e in top:
        print(f"| {e.key} | {e.self_cpu_time_total / 1e6:.2f} | {e.count} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
