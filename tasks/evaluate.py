from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tailor.pipeline import Evaluation, PreparedData, evaluate_models
from tailor.settings import Settings
from tasks.common import RETRIES, RETRY_DELAYS, retry_unless_bad_input


@task(
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def evaluate(
    prepared: PreparedData, vectors_path: Path, model_dir: Path, settings: Settings, out_dir: Path
) -> Evaluation:
    """The fine-tuned model and the baselines under the default protocol."""
    result = evaluate_models(prepared, vectors_path, model_dir, settings, out_dir)
    get_run_logger().info("evaluation:\n%s", result.table.read_text())
    return result
