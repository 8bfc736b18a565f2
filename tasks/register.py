from pathlib import Path

from prefect import get_run_logger

from tailor.settings import Settings
from tailor.stages import register as stage
from tailor.stages.data import PreparedData
from tailor.stages.register import ChampionScore
from tailor.tracking.registry import GateDecision
from tasks.common import stage_task


@stage_task()
def bundle_model(
    prepared: PreparedData,
    vectors_path: Path,
    model_dir: Path,
    index_path: Path,
    settings: Settings,
    out_dir: Path,
) -> Path:
    """Everything serving needs in one folder (its settings name the encoder to use)."""
    return stage.bundle_model(prepared, vectors_path, model_dir, index_path, settings, out_dir)


@stage_task()
def score_champion(prepared: PreparedData, settings: Settings) -> ChampionScore | None:
    """The champion's metrics on this run's test cases, or None when there is no champion."""
    score = stage.score_champion(prepared, settings)
    if score is not None:
        get_run_logger().info(
            "champion version %s on this run's test cases: %s %.4f",
            score.version,
            settings.eval.gate_metric,
            score.metrics.get(settings.eval.gate_metric, float("nan")),
        )
    return score


@stage_task()
def register_model(
    bundle: Path,
    settings: Settings,
    run_id: str,
    gate_value: float,
    champion_score: ChampionScore | None = None,
) -> GateDecision:
    """Log the bundle as a registered model version; move `champion` if it passes the gate."""
    decision = stage.register_model(bundle, settings, run_id, gate_value, champion_score)
    get_run_logger().info(
        "registered %s version %s: %s (%s)",
        settings.tracking.model_name,
        decision.version,
        "promoted to " + settings.tracking.champion_alias if decision.promoted else "not promoted",
        decision.reason,
    )
    return decision
