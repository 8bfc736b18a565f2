"""Package a trained model as a bundle, compare with the champion, register behind the gate."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.evaluation.champion import score_bundle
from tailor.evaluation.compare import Exam
from tailor.models.bundle import Bundle, Lineage, write_bundle
from tailor.models.index import load_index
from tailor.models.sequential import load_recommender
from tailor.ranking.tail import item_popularity
from tailor.settings import Settings
from tailor.stages.data import PreparedData, all_histories, load_histories
from tailor.stages.evaluate import Evaluation
from tailor.tracking.registry import (
    Comparison,
    GateDecision,
    champion,
    decide_promotion,
    load_bundle,
    promote,
    register_bundle,
)
from tailor.tracking.runs import client_for

log = logging.getLogger(__name__)


def bundle_model(
    prepared: PreparedData,
    vectors_path: Path,
    model_dir: Path,
    index_path: Path,
    settings: Settings,
    out_dir: Path,
    lineage: Lineage | None = None,
) -> Path:
    """Everything serving needs in one folder (its settings name the encoder to use).

    Popularity (head and tail, the popular fallback) counts the positives the model learned
    from: the training events for the evaluation fit, every event for the production fit
    (the one with a `lineage`).
    """
    if lineage is None:
        positives = load_histories(prepared).train_positives()
    else:
        _, histories, liked = all_histories(prepared)
        positives = [h[m] for h, m in zip(histories, liked, strict=True)]
    text_vectors = np.load(vectors_path)
    popularity = item_popularity(
        np.concatenate(positives) if positives else np.zeros(0, dtype=np.int64), len(text_vectors)
    )
    folder = Path(out_dir) / "bundle"
    if folder.exists():
        shutil.rmtree(folder)
    return write_bundle(
        folder,
        pl.read_parquet(prepared.items),
        popularity,
        text_vectors,
        load_recommender(model_dir, text_vectors, device="cpu"),
        load_index(index_path),
        settings.public_json(),  # no keys, no passwords: a bundle is an artifact anyone may read
        lineage=lineage,
    )


def lineage_of(
    prepared: PreparedData,
    evaluation: Evaluation,
    evaluation_run_id: str,
    production_run_id: str,
) -> Lineage:
    """What the registered version records: its data, its exam, both fits' runs, and the
    evaluation fit's test metrics (the gate's evidence when the next run sits the same exam)."""
    tested = {k: v for k, v in evaluation.metrics[evaluation.primary].items() if k[:5] == "test_"}
    return Lineage(
        data_fingerprint=prepared.fingerprint,
        exam=prepared.exam,
        data_start=prepared.data_start,
        data_end=prepared.data_end,
        evaluation_run_id=evaluation_run_id,
        production_run_id=production_run_id,
        metrics=tested,
    )


def score_champion(
    prepared: PreparedData, candidate_dir: Path, evaluation: Evaluation, settings: Settings
) -> Comparison | None:
    """The champion and this run's evaluation fit on cases neither trained on; None when
    there is no champion (see docs/ARCHITECTURE.md, "The champion gate")."""
    client = client_for(settings.tracking_uri)
    t = settings.tracking
    metric = settings.eval.gate_metric
    current = champion(client, t.model_name, t.champion_alias)
    if current is None:
        return None
    version = str(current.version)
    recorded = Lineage.from_tags(current.tags)
    ours = evaluation.metrics[evaluation.primary].get(metric)

    def compared(basis: str, theirs: float | None, mine: float | None, n: int, why: str):
        return Comparison(version, basis, metric, theirs, mine, n, why)

    hist = load_histories(prepared)
    if recorded is None:
        return compared("none", None, None, 0, f"version {version} records no lineage")
    if recorded.exam == prepared.exam:
        why = f"the same exam: {len(hist.test_targets)} test cases neither fit trained on"
        return compared(
            "same exam", recorded.metrics.get(metric), ours, len(hist.test_targets), why
        )

    # New data: the test cases later than everything the champion learned from.
    ended = datetime.fromisoformat(recorded.data_end).astimezone(UTC).replace(tzinfo=None)
    end = np.datetime64(ended, "us")
    rows = np.flatnonzero(hist.test_times > end)
    if len(rows) < settings.eval.gate_min_cases:
        why = (
            f"the data changed, and {len(rows)} test cases are later than the champion's data "
            f"(ends {recorded.data_end}); eval.gate_min_cases is {settings.eval.gate_min_cases}"
        )
        return compared("none", None, None, len(rows), why)
    exam = Exam(hist, settings.eval)
    item_ids = pl.read_parquet(prepared.items, columns=[C.ITEM_ID])[C.ITEM_ID].to_list()
    theirs = score_bundle(
        load_bundle(settings.tracking_uri, t.model_name, version),
        exam,
        item_ids,
        settings.rerank,
        rows,
    )
    mine = score_bundle(Bundle(candidate_dir), exam, item_ids, settings.rerank, rows)
    why = f"{len(rows)} test cases later than the champion's data (ends {recorded.data_end})"
    return compared("new data", theirs.get(metric), mine.get(metric), len(rows), why)


def register_model(
    bundle: Path,
    comparison: Comparison | None,
    candidate_value: float | None,
    settings: Settings,
    production_run_id: str,
) -> GateDecision:
    """Register the production bundle (a version of `production_run_id`, tagged with its
    lineage) and move the champion alias if the gate says so."""
    client = client_for(settings.tracking_uri)
    t = settings.tracking
    metric = settings.eval.gate_metric
    lineage = Bundle(bundle).lineage
    tags = lineage.tags() if lineage is not None else {}
    version = register_bundle(client, production_run_id, bundle, t.model_name, tags)
    promoted, reason = decide_promotion(metric, candidate_value, comparison)
    current = champion(client, t.model_name, t.champion_alias)
    compared_with = None if comparison is None else comparison.champion_version
    now = None if current is None else str(current.version)
    if now != compared_with:
        # Another run moved the alias after this one looked: the comparison is against a
        # model that is no longer champion, so it cannot decide.
        promoted = False
        reason = f"champion moved to version {now} during this run; not compared"
    if promoted:
        promote(client, t.model_name, t.champion_alias, version)
    log.info("model %s version %s: %s (%s)", t.model_name, version, promoted, reason)
    return GateDecision(
        version=version,
        promoted=promoted,
        metric=metric,
        value=candidate_value if comparison is None else comparison.candidate_value,
        champion_version=compared_with,
        champion_value=None if comparison is None else comparison.champion_value,
        reason=reason,
    )
