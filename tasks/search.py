from pathlib import Path
from typing import Any

from prefect import get_run_logger

from tailor.settings import Settings
from tailor.stages import search as stage
from tailor.stages.data import PreparedData
from tailor.stages.search import SearchTrial
from tasks.common import stage_task


@stage_task()
def search_trial(
    prepared: PreparedData, vectors_path: Path, settings: Settings, params: dict[str, Any]
) -> SearchTrial:
    """One hyper-parameter combination, trained and scored on validation."""
    trial = stage.search_trial(prepared, vectors_path, settings, params)
    get_run_logger().info(
        "trial %s: valid NDCG@10 %.4f (best epoch %d, %.0f s)",
        params,
        trial.metrics[stage.OBJECTIVE],
        trial.best_epoch,
        trial.seconds,
    )
    return trial
