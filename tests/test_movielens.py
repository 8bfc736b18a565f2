"""The main job on real MovieLens-100K (read from the recbole wheel, fetched from PyPI once)."""

from __future__ import annotations

import pytest

from flows.pipeline import train_and_refresh
from tests.conftest import tiny_settings

pytestmark = [pytest.mark.realdata, pytest.mark.usefixtures("prefect_harness")]


def test_movielens_pipeline_beats_most_popular(workdir):
    settings = tiny_settings(
        workdir,
        data={"source": "movielens-100k"},
        # The default model, batch and threads; a short schedule (the assertions need a model
        # that has learned, not the best one).
        train={
            "epochs": 3,
            "refit_epochs": 1,
            "dim": 64,
            "layers": 2,
            "max_len": 50,
            "threads": "auto",
        },
        refresh={"k": 20},
    )
    result = train_and_refresh(settings=settings)
    metrics = result.train.metrics
    assert result.refresh.n_users == 943
    assert result.refresh.n_rows == 943 * 20
    ours, popular = metrics["tailor-seq"], metrics["most-popular"]
    assert ours["valid_ndcg_at_10"] > popular["valid_ndcg_at_10"]
    assert ours["test_coverage_at_20"] > popular["test_coverage_at_20"]
