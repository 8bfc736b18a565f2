"""The claims a run makes against its baselines, each with a paired bootstrap interval."""

from __future__ import annotations

from typing import Any

import numpy as np

from tailor.evaluation.compare import ID_SEQUENTIAL, SEQUENTIAL, Comparison, Exam
from tailor.evaluation.metrics import paired_bootstrap, per_user_metric


def bootstrap_claims(comparison: Comparison, exam: Exam, seed: int) -> dict[str, dict[str, Any]]:
    """Paired bootstrap over users (cold: over cases) for each claim the targets make.

    Against the best order-free baseline (collaborative filtering, popularity, text): NDCG@10,
    tail-recall@20, and cold-item recall@20 against text-cosine. Against SASRec on ids (the
    same network without text) and GRU4Rec on ids, when they ran: NDCG@10 and tail-recall@20,
    claims ending in `_vs_sasrec` / `_vs_gru4rec`. Returns
    {claim: {"vs", "ratio", "gain", "low", "high"}}; a gain is real when
    "low" (the lower end of the 95 % interval of the per-user difference) is above zero.
    """
    metrics, tops, cold_tops = comparison.metrics, comparison.test_tops, comparison.cold_tops
    hist = exam.hist
    out: dict[str, dict[str, Any]] = {}
    baselines = [m for m in metrics if m != SEQUENTIAL and m not in ID_SEQUENTIAL]
    if not baselines or len(hist.test_targets) == 0:
        return out

    def record(claim: str, other: str, a: np.ndarray, b: np.ndarray) -> None:
        gain, low, high = paired_bootstrap(
            a, b, n_resamples=exam.settings.bootstrap_resamples, seed=seed
        )
        base = float(b.mean())
        ratio = float(a.mean() / base) if base > 0 else float("inf")
        out[claim] = {"vs": other, "ratio": ratio, "gain": gain, "low": low, "high": high}

    def best_by(key: str) -> str:
        return max(baselines, key=lambda m: metrics[m].get(key, 0.0))

    targets = hist.test_targets
    best = best_by("test_ndcg_at_10")
    record(
        "ndcg_at_10",
        best,
        per_user_metric(tops[SEQUENTIAL], targets, "ndcg", 10),
        per_user_metric(tops[best], targets, "ndcg", 10),
    )
    tail = exam.is_tail[targets]
    if tail.any():
        best = best_by("test_tail_recall_at_20")
        record(
            "tail_recall_at_20",
            best,
            per_user_metric(tops[SEQUENTIAL][tail], targets[tail], "recall", 20),
            per_user_metric(tops[best][tail], targets[tail], "recall", 20),
        )
    for other in (m for m in ID_SEQUENTIAL if m in metrics):
        record(
            f"ndcg_at_10_vs_{other}",
            other,
            per_user_metric(tops[SEQUENTIAL], targets, "ndcg", 10),
            per_user_metric(tops[other], targets, "ndcg", 10),
        )
        if tail.any():
            record(
                f"tail_recall_at_20_vs_{other}",
                other,
                per_user_metric(tops[SEQUENTIAL][tail], targets[tail], "recall", 20),
                per_user_metric(tops[other][tail], targets[tail], "recall", 20),
            )
    if len(hist.cold_targets) and "text-cosine" in cold_tops:
        record(
            "cold_recall_at_20",
            "text-cosine",
            per_user_metric(cold_tops[SEQUENTIAL], hist.cold_targets, "recall", 20),
            per_user_metric(cold_tops["text-cosine"], hist.cold_targets, "recall", 20),
        )
    return out
