from pathlib import Path

from prefect import get_run_logger

from tailor.pipeline import (
    ColdStart,
    Evaluation,
    FineTuned,
    PreparedData,
    evaluate_cold_start,
    evaluate_models,
)
from tailor.settings import Settings
from tasks.common import stage_task


@stage_task()
def evaluate(
    prepared: PreparedData,
    vectors_path: Path,
    tuned: FineTuned,
    settings: Settings,
    out_dir: Path,
    frozen_vectors_path: Path | None = None,
) -> Evaluation:
    """The fine-tuned model and every baseline under the default protocol."""
    result = evaluate_models(prepared, vectors_path, tuned, settings, out_dir, frozen_vectors_path)
    get_run_logger().info("evaluation:\n%s", result.table.read_text())
    return result


@stage_task()
def evaluate_live_cold_start(
    prepared: PreparedData, bundle: Path, settings: Settings, out_dir: Path
) -> ColdStart:
    """New users (profile only) and new items (inserted like the service does), measured
    through the live service's code on this run's test cases."""
    result = evaluate_cold_start(prepared, bundle, settings, out_dir)
    get_run_logger().info("cold start:\n%s", result.table.read_text())
    return result
