from pathlib import Path

from tailor.settings import Settings
from tailor.stages import refresh as stage
from tailor.stages.data import PreparedData
from tailor.stages.refresh import RefreshOutcome, RefreshPlan
from tasks.common import stage_task


@stage_task()
def plan_refresh(
    prepared: PreparedData, settings: Settings, model_version: str, work_dir: Path
) -> RefreshPlan:
    """Every user, sorted, cut into blocks of `refresh.block_users`."""
    return stage.plan_refresh(prepared, settings, model_version, work_dir)


@stage_task(task_run_name="score-block-{block}")
def score_block(prepared: PreparedData, settings: Settings, plan: RefreshPlan, block: int) -> Path:
    """One block's top-k lists as one Parquet part (kept if already written)."""
    return stage.score_block(prepared, settings, plan, block)


@stage_task()
def publish_recommendations(
    prepared: PreparedData,
    settings: Settings,
    plan: RefreshPlan,
    parts: list[Path],
    out_dir: Path,
) -> RefreshOutcome:
    """Every part into the store as one batch, all or nothing."""
    return stage.publish_recommendations(prepared, settings, plan, parts, out_dir)
