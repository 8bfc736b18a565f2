from pathlib import Path
from typing import Any

from prefect import get_run_logger

from tailor.pipeline import PreparedData, SearchTrial, run_search_trial
from tailor.settings import Settings
from tasks.common import stage_task


@stage_task()
def search_trial(
    prepared: PreparedData, vectors_path: Path, settings: Settings, params: dict[str, Any]
) -> SearchTrial:
    """One hyper-parameter combination, trained and scored on validation."""
    trial = run_search_trial(prepared, vectors_path, settings, params)
    get_run_logger().info(
        "trial %s: valid NDCG@10 %.4f (best epoch %d, %.0f s)",
        params,
        trial.metrics["valid_ndcg_at_10"],
        trial.best_epoch,
        trial.seconds,
    )
    return trial
