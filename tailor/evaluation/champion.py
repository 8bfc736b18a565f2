"""Scoring the current champion on a new run's test cases, through the serving path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tailor.evaluation.compare import Exam
from tailor.evaluation.metrics import ranking_metrics
from tailor.models.bundle import Bundle
from tailor.ranking.rank import rank_histories
from tailor.serving.batch import bundle_policy
from tailor.settings import RerankSettings


def score_bundle(
    bundle: Bundle,
    exam: Exam,
    item_ids: Sequence[str],
    rerank: RerankSettings,
    rows: np.ndarray | None = None,
) -> dict[str, float]:
    """A registered bundle's test metrics on `exam`'s test cases (`rows` of them, or all).

    The bundle ranks exactly as it serves (its index, its popularity for head and tail, the
    tail-aware re-ranking). Histories and lists are mapped through item ids (`item_ids`: this
    run's item positions); items the bundle never saw are dropped from histories and can never
    be found by it.
    """
    hist = exam.hist
    histories, targets = exam.cases["test"]
    if rows is not None:
        histories = [histories[r] for r in rows]
        targets = targets[rows]
    ours = {item: pos for pos, item in enumerate(item_ids)}
    theirs = [bundle.positions([item_ids[i] for i in h]) for h in histories]
    policy = bundle_policy(bundle, exam.k, rerank, exam.settings.head_share)
    found = rank_histories(bundle.model, bundle.index, theirs, policy).items
    top = np.array(
        [[ours.get(bundle.item_ids[i], -1) if i >= 0 else -1 for i in row] for row in found],
        dtype=np.int64,
    ).reshape(len(theirs), exam.k)
    s = exam.settings
    values = ranking_metrics(top, targets, exam.popularity, s.head_share, s.ks, len(hist.users))
    return {f"test_{key}": value for key, value in values.items()}
