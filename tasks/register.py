from pathlib import Path

from prefect import get_run_logger

from tailor.models.bundle import Lineage
from tailor.settings import Settings
from tailor.stages import register as stage
from tailor.stages.data import PreparedData
from tailor.stages.evaluate import Evaluation
from tailor.tracking.registry import Comparison, GateDecision
from tasks.common import stage_task


@stage_task()
def bundle_model(
    prepared: PreparedData,
    vectors_path: Path,
    model_dir: Path,
    index_path: Path,
    settings: Settings,
    out_dir: Path,
    lineage: Lineage | None = None,
) -> Path:
    """Everything serving needs in one folder (its settings name the encoder to use)."""
    return stage.bundle_model(
        prepared, vectors_path, model_dir, index_path, settings, out_dir, lineage
    )


@stage_task()
def score_champion(
    prepared: PreparedData, candidate_dir: Path, evaluation: Evaluation, settings: Settings
) -> Comparison | None:
    """The champion and this run's evaluation fit on cases neither trained on."""
    comparison = stage.score_champion(prepared, candidate_dir, evaluation, settings)
    if comparison is not None:
        get_run_logger().info(
            "champion version %s vs this run (%s): %s",
            comparison.champion_version,
            comparison.basis,
            comparison.detail,
        )
    return comparison


@stage_task()
def register_model(
    bundle: Path,
    comparison: Comparison | None,
    candidate_value: float | None,
    settings: Settings,
    production_run_id: str,
) -> GateDecision:
    """Register the production bundle; move `champion` if it passes the gate."""
    decision = stage.register_model(
        bundle, comparison, candidate_value, settings, production_run_id
    )
    get_run_logger().info(
        "registered %s version %s: %s (%s)",
        settings.tracking.model_name,
        decision.version,
        "promoted to " + settings.tracking.champion_alias if decision.promoted else "not promoted",
        decision.reason,
    )
    return decision
