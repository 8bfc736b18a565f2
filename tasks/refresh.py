from pathlib import Path

from tailor.settings import Settings
from tailor.stages import refresh as stage
from tailor.stages.data import PreparedData
from tailor.stages.refresh import RefreshOutcome
from tasks.common import stage_task


@stage_task()
def refresh_recommendations(
    prepared: PreparedData, settings: Settings, model_version: str, out_dir: Path
) -> RefreshOutcome:
    """Top-k for every user from the given model version, published atomically to the store."""
    return stage.refresh_recommendations(prepared, settings, model_version, out_dir)
