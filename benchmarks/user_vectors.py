"""A user's vector from the full pass against the last position alone, side by side.

    python benchmarks/user_vectors.py [--workdir .tailor] [--rounds 5] [--preset tiny]

A user's vector is the last position's hidden state. The full pass computes every position in
every block; `SeqRecNet.encode_last` computes only the last position's query in the last
block. Both run in one process, alternating `--rounds` times, on the default network (one
seeded fit epoch on the workdir's data, prepared and embedded as `tailor run` does), on one
torch thread as the evaluation fit's lane runs. Prints per way the median time of every test
user's vector and of the per-epoch validation pass (`Exam.validation_score`), and the largest
difference between the two ways' vectors.
"""

from __future__ import annotations

import argparse
import time

from _workdir import load_workdir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".tailor")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--preset", default=None, help="e.g. tiny: synthetic data, seconds")
    args = parser.parse_args()

    import numpy as np
    import torch

    from tailor.evaluation.compare import Exam
    from tailor.models.sequential import SeqRecommender

    settings, vectors, hist = load_workdir(args.workdir, args.preset, "user_vectors")
    exam = Exam(hist, settings.eval)
    train = settings.train.model_copy(update={"epochs": 1, "threads": 1, "patience": None})
    model = SeqRecommender(vectors, train, seed=settings.seed)
    model.fit(hist.train, settings.seed, liked=hist.train_liked)
    net = model.net
    last = net.encode_last
    ways = {"full pass": lambda seqs, items: net.encode(seqs, items)[:, -1], "last position": last}
    users = exam.cases["test"][0]
    seconds: dict[str, dict[str, list[float]]] = {w: {"users": [], "valid": []} for w in ways}
    found: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for way, encode in ways.items():
            net.encode_last = encode
            began = time.perf_counter()
            found[way] = model.user_vectors(users)
            seconds[way]["users"].append(time.perf_counter() - began)
            began = time.perf_counter()
            exam.validation_score(model)
            seconds[way]["valid"].append(time.perf_counter() - began)
    net.encode_last = last
    gap = float(np.abs(found["full pass"] - found["last position"]).max())

    print(
        f"\n## A user's vector two ways: {len(users):,} test users, {model.n_items:,} items, "
        f"{torch.get_num_threads()} torch thread(s), median of {args.rounds} rounds\n"
    )
    print("| way | every test user's vector ms | validation pass ms | vs full pass |")
    print("| --- | ---: | ---: | ---: |")
    base = float(np.median(seconds["full pass"]["users"]))
    for way, taken in seconds.items():
        users_ms, valid_ms = (1000 * float(np.median(taken[k])) for k in ("users", "valid"))
        print(f"| {way} | {users_ms:.1f} | {valid_ms:.1f} | {base * 1000 / users_ms:.2f}x |")
    print(f"\nlargest difference between the two ways' vectors: {gap:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
