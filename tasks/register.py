from pathlib import Path

from prefect import get_run_logger

from tailor.pipeline import PreparedData, assemble_bundle
from tailor.registry import GateDecision, register_bundle
from tailor.settings import Settings
from tailor.tracking import client_for
from tasks.common import stage_task


@stage_task()
def register_model(
    prepared: PreparedData,
    vectors_path: Path,
    model_dir: Path,
    index_path: Path,
    settings: Settings,
    out_dir: Path,
    run_id: str,
    gate_value: float,
) -> GateDecision:
    """Log the bundle as a registered model version; move `champion` if it passes the gate."""
    bundle = assemble_bundle(prepared, vectors_path, model_dir, index_path, settings, out_dir)
    decision = register_bundle(
        client_for(settings.tracking_uri),
        run_id,
        bundle,
        settings.tracking.model_name,
        settings.tracking.champion_alias,
        settings.eval.gate_metric,
        gate_value,
    )
    get_run_logger().info(
        "registered %s version %s: %s (%s)",
        settings.tracking.model_name,
        decision.version,
        "promoted to " + settings.tracking.champion_alias if decision.promoted else "not promoted",
        decision.reason,
    )
    return decision
