"""What each part of the sequential model adds: the same recipe with parts switched off.

Rows, each trained by `fit_recipe` with the configured budget and ranked through the served
policy (the tail-aware re-ranking included), on the run's test and cold-item cases:

- ids only: SASRec-CE (the `sasrec` baseline's model, re-ranked like the others);
- text only: adapter(text), no id embedding;
- ids + text: both, no text view, no id gate;
- + text view: the second loss that scores new items by their text;
- + id gate: ids weighed by an item's events (when configured);
- the configured model (tailor-seq itself);
- + encoder tuning: the configured model on the vectors of an encoder tuned on this run's
  training positives (when the run's own encoder is not tuned).

Each row's per-user NDCG@10, Recall@20 and tail-recall@20 are bootstrapped against ids only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tailor.evaluation.compare import SASREC, SEQUENTIAL, Comparison, Exam, rank_vector_model
from tailor.evaluation.metrics import paired_bootstrap, per_user_metric
from tailor.ranking.rank import rank_dense
from tailor.settings import IndexSettings, RerankSettings, TrainSettings

log = logging.getLogger(__name__)

IDS_ONLY = "ids only (SASRec-CE)"
ENCODER_TUNING = "+ encoder tuning"
COLUMNS = [
    ("NDCG@10", "test_ndcg_at_10"),
    ("Recall@20", "test_recall_at_20"),
    ("tail-recall@20", "test_tail_recall_at_20"),
    ("coverage@20", "test_coverage_at_20"),
    ("APLT@20", "test_aplt_at_20"),
    ("cold-recall@20", "cold_recall_at_20"),
]
BOOTSTRAPPED = [("ndcg", 10, None), ("recall", 20, None), ("recall", 20, "tail")]


@dataclass
class AblationRow:
    name: str
    metrics: dict[str, float]
    vs_ids: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # gain, low, high


def variants(train: TrainSettings) -> tuple[dict[str, dict[str, Any]], str]:
    """The rows to train (switching the configured model's parts off, from the bottom up) and
    the name of the configured model's own row."""
    rows: dict[str, dict[str, Any]] = {"text only": {"id_embedding": False, "id_gate": 0.0}}
    if train.text_view_weight > 0 or train.id_gate > 0:
        rows["ids + text"] = {"text_view_weight": 0.0, "id_gate": 0.0}
    if train.text_view_weight > 0 and train.id_gate > 0:
        rows["+ text view"] = {"id_gate": 0.0}
    if train.id_gate > 0:
        return rows, "+ id gate (tailor-seq)"
    if train.text_view_weight > 0:
        return rows, "+ text view (tailor-seq)"
    return rows, "ids + text (tailor-seq)"


def ablate(
    exam: Exam,
    comparison: Comparison,
    text_vectors: np.ndarray,
    train: TrainSettings,
    rerank: RerankSettings,
    index: IndexSettings,
    seed: int,
    tuned_vectors: np.ndarray | None = None,
) -> list[AblationRow]:
    """The ablation rows (see the module); with `tuned_vectors` (a tuned encoder's item
    vectors) the configured recipe on those is the last row."""
    policy = exam.policy(rerank)
    hist = exam.hist
    models: dict[str, Any] = {}
    if SASREC in comparison.evaluated:
        models[IDS_ONLY] = comparison.evaluated[SASREC]
    to_train, configured = variants(train)
    runs = [(name, text_vectors, changes) for name, changes in to_train.items()]
    if tuned_vectors is not None:
        runs.append((ENCODER_TUNING, tuned_vectors, {}))
    for name, vectors, changes in runs:
        log.info("ablation: training %s", name)
        models[name] = exam.fit(vectors, train.model_copy(update=changes), seed).evaluated
    models[configured] = comparison.evaluated[SEQUENTIAL]
    if ENCODER_TUNING in models:  # after the configured row: it adds to that model
        models[ENCODER_TUNING] = models.pop(ENCODER_TUNING)

    tops: dict[str, dict[str, np.ndarray]] = {}
    rows = []
    for name, model in models.items():
        if name == IDS_ONLY:  # scores only: no vectors for untrained items
            ranked = {
                s: rank_dense(model, exam.cases[s][0], policy).items for s in ("test", "cold")
            }
        else:
            ranked = {
                s: rank_vector_model(model, exam.cases[s][0], policy, index, seed).items
                for s in ("test", "cold")
            }
        tops[name] = ranked
        rows.append(AblationRow(name, exam.measure(ranked)))
    if IDS_ONLY in tops:
        targets = hist.test_targets
        tail = exam.is_tail[targets]
        for row in rows:
            for metric, k, part in BOOTSTRAPPED:
                keep = tail if part == "tail" else np.ones(len(targets), dtype=bool)
                if not keep.any():
                    continue
                ours = per_user_metric(tops[row.name]["test"][keep], targets[keep], metric, k)
                theirs = per_user_metric(tops[IDS_ONLY]["test"][keep], targets[keep], metric, k)
                key = f"{'tail_' if part else ''}{metric}_at_{k}"
                row.vs_ids[key] = paired_bootstrap(
                    ours, theirs, n_resamples=exam.settings.bootstrap_resamples, seed=seed
                )
    return rows


def ablation_markdown(rows: list[AblationRow]) -> str:
    lines = [
        "Ablation (test; every row the same recipe and budget, ranked with the served "
        "re-ranking; gain vs ids only, 95 % paired bootstrap interval):",
        "",
        "| model | " + " | ".join(c[0] for c in COLUMNS) + " | NDCG@10 gain | Recall@20 gain "
        "| tail-recall@20 gain |",
        "| --- | " + " | ".join("---:" for _ in COLUMNS) + " | --- | --- | --- |",
    ]
    for row in rows:
        cells = [f"{row.metrics.get(key, float('nan')):.4f}" for _, key in COLUMNS]
        gains = []
        for key in ("ndcg_at_10", "recall_at_20", "tail_recall_at_20"):
            if key in row.vs_ids and row.name != IDS_ONLY:
                gain, low, high = row.vs_ids[key]
                gains.append(f"{gain:+.4f} [{low:+.4f}, {high:+.4f}]")
            else:
                gains.append("")
        lines.append(f"| {row.name} | " + " | ".join(cells + gains) + " |")
    return "\n".join(lines) + "\n"
