"""The ablation: the same recipe with parts switched off, each against SASRec-CE on ids."""

from __future__ import annotations

import numpy as np

from tailor.evaluation.ablation import ENCODER_TUNING, IDS_ONLY, variants
from tailor.settings import TrainSettings
from tailor.stages.evaluate import evaluate_models
from tests.conftest import tiny_settings, train_tiny_bundle


def test_rows_switch_the_configured_parts_off_one_by_one():
    rows, own = variants(TrainSettings(text_view_weight=0.3, id_gate=20.0))
    assert list(rows) == ["text only", "ids + text", "+ text view"] and own.startswith("+ id gate")
    rows, own = variants(TrainSettings(text_view_weight=0.3, id_gate=0.0))
    assert list(rows) == ["text only", "ids + text"] and own.startswith("+ text view")
    rows, own = variants(TrainSettings(text_view_weight=0.0))
    assert list(rows) == ["text only"] and own.startswith("ids + text")


def test_the_ablation_table_compares_every_row_with_ids_only(workdir, tmp_path):
    settings = tiny_settings(
        workdir, train={"text_view_weight": 0.3, "id_gate": 5.0}, eval={"ablation": True}
    )
    prepared, embedded, trained, _ = train_tiny_bundle(settings, tmp_path)
    evaluation = evaluate_models(prepared, embedded.vectors, trained, settings, tmp_path / "e")
    names = list(evaluation.ablation)
    configured = "+ id gate (tailor-seq)"
    assert names == [IDS_ONLY, "text only", "ids + text", "+ text view", configured, ENCODER_TUNING]
    # The configured row is the evaluated model itself: the same numbers as tailor-seq's.
    ours = evaluation.metrics["tailor-seq"]
    assert (
        evaluation.ablation["+ id gate (tailor-seq)"]["test_ndcg_at_10"] == ours["test_ndcg_at_10"]
    )
    # Ids only cannot rank the held-out items; every row with text can.
    assert evaluation.ablation[IDS_ONLY]["cold_recall_at_20"] == 0.0
    assert np.isfinite(evaluation.ablation["text only"]["test_ndcg_at_10"])
    # The tuned encoder's row is the configured recipe on other vectors: other numbers.
    tuned = evaluation.ablation[ENCODER_TUNING]
    assert tuned != evaluation.ablation[configured]
    assert 0.0 <= tuned["cold_recall_at_20"] <= 1.0
    text = evaluation.table.read_text()
    assert "Ablation" in text and "+ text view" in text
    assert "ablation.text_only.test_ndcg_at_10" in evaluation.record().metrics
