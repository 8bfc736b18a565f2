"""What a run's evaluation shows people: the comparison table and a sample of its lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.evaluation.compare import SEQUENTIAL, Comparison, Exam


def evaluation_markdown(
    comparison: Comparison, significance: dict[str, dict[str, Any]], exam: Exam, n_cold_items: int
) -> str:
    """The comparison table, the claims with their intervals, and the re-ranking sweep."""
    metrics, params, sweep = comparison.metrics, comparison.params, comparison.sweep
    primary, hist = SEQUENTIAL, exam.hist
    k = exam.k
    cols = [
        ("NDCG@10", "test_ndcg_at_10"),
        ("Recall@10", "test_recall_at_10"),
        (f"Recall@{k}", f"test_recall_at_{k}"),
        ("MRR@10", "test_mrr_at_10"),
        (f"coverage@{k}", f"test_coverage_at_{k}"),
        (f"tail-recall@{k}", f"test_tail_recall_at_{k}"),
        (f"APLT@{k}", f"test_aplt_at_{k}"),
        (f"novelty@{k}", f"test_novelty_at_{k}"),
        (f"cold-recall@{k}", f"cold_recall_at_{k}"),
        ("valid NDCG@10", "valid_ndcg_at_10"),
    ]
    lines = [
        f"Test: {len(hist.test_targets)} users (temporal leave-one-out, full ranking over "
        f"{hist.n_items} items, seen items excluded). Cold: {len(hist.cold_targets)} events on "
        f"{n_cold_items} items held out of training.",
        "",
        "| model | " + " | ".join(c[0] for c in cols) + " | chosen parameters |",
        "| --- | " + " | ".join("---:" for _ in cols) + " | --- |",
    ]
    for name, values in metrics.items():
        cells = [f"{values.get(key, float('nan')):.4f}" for _, key in cols]
        chosen = ", ".join(f"{p}={v}" for p, v in params.get(name, {}).items())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {chosen} |")
    if significance:
        lines += ["", "Paired bootstrap (95 % interval of the per-user difference):", ""]
        lines += [
            "| claim | vs | ratio | gain | 95 % interval |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for claim, sig in significance.items():
            lines.append(
                f"| {primary} {claim} | {sig['vs']} | {sig['ratio']:.2f}x | {sig['gain']:+.4f} "
                f"| [{sig['low']:+.4f}, {sig['high']:+.4f}] |"
            )
    lines += ["", "Re-ranking strength (test):", ""]
    lines += [f"| strength | NDCG@10 | Recall@{k} | tail-recall@{k} | coverage@{k} | APLT@{k} |"]
    lines += ["| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in sweep:
        lines.append(
            f"| {row['strength']:.2f} | {row['ndcg_at_10']:.4f} | {row[f'recall_at_{k}']:.4f} "
            f"| {row[f'tail_recall_at_{k}']:.4f} | {row[f'coverage_at_{k}']:.4f} "
            f"| {row[f'aplt_at_{k}']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def write_sample(labels: list[str], exam: Exam, top: np.ndarray, path: Path, show_ids=None) -> Path:
    """The first 25 test users' top 10 with the held-out item and whether it was found.

    `show_ids` maps user ids to what the artifact may show (pseudonyms by default upstream)."""
    hist = exam.hist
    rows = []
    shown = (show_ids or (lambda ids: list(ids)))([hist.users[r] for r in hist.test_users[:25]])
    for row in range(len(shown)):
        for rank, item in enumerate(top[row, :10], start=1):
            if item < 0:
                continue
            rows.append(
                {
                    C.USER_ID: shown[row],
                    C.RANK: rank,
                    C.LABEL: labels[item],
                    "held_out": labels[hist.test_targets[row]],
                    "hit": bool(item == hist.test_targets[row]),
                }
            )
    pl.DataFrame(rows).write_csv(path)
    return path
