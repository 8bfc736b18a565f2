from pathlib import Path

from prefect import get_run_logger

from tailor.pipeline import Evaluation, FineTuned, PreparedData, evaluate_models
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
