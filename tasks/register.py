from pathlib import Path

from prefect import get_run_logger

from tailor.pipeline import PreparedData, assemble_bundle, score_champion
from tailor.registry import ChampionScore, GateDecision, register_bundle
from tailor.settings import Settings
from tailor.tracking import client_for
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
    return assemble_bundle(prepared, vectors_path, model_dir, index_path, settings, out_dir)


@stage_task()
def register_model(
    bundle: Path,
    settings: Settings,
    run_id: str,
    gate_value: float,
    champion_score: tuple[str, float] | None = None,
) -> GateDecision:
    """Log the bundle as a registered model version; move `champion` if it passes the gate."""
    decision = register_bundle(
        client_for(settings.tracking_uri),
        run_id,
        bundle,
        settings.tracking.model_name,
        settings.tracking.champion_alias,
        settings.eval.gate_metric,
        gate_value,
        champion_score=champion_score,
    )
    get_run_logger().info(
        "registered %s version %s: %s (%s)",
        settings.tracking.model_name,
        decision.version,
        "promoted to " + settings.tracking.champion_alias if decision.promoted else "not promoted",
        decision.reason,
    )
    return decision


@stage_task()
def score_current_champion(prepared: PreparedData, settings: Settings) -> ChampionScore | None:
    """The champion's metrics on this run's test cases, or None when there is no champion."""
    from tailor.registry import champion, load_bundle

    client = client_for(settings.tracking_uri)
    current = champion(client, settings.tracking.model_name, settings.tracking.champion_alias)
    if current is None:
        return None
    version = str(current.version)
    bundle = load_bundle(settings.tracking_uri, settings.tracking.model_name, version)
    metrics = score_champion(prepared, bundle.folder, settings)
    get_run_logger().info(
        "champion version %s on this run's test cases: %s %.4f",
        version,
        settings.eval.gate_metric,
        metrics.get(settings.eval.gate_metric, float("nan")),
    )
    return ChampionScore(version=version, metrics=metrics)
