from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tailor.pipeline import FineTuned, PreparedData, build_item_index, fine_tune
from tailor.settings import Settings
from tasks.common import RETRIES, RETRY_DELAYS, retry_unless_bad_input


@task(
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def fine_tune_model(
    prepared: PreparedData, vectors_path: Path, settings: Settings, out_dir: Path
) -> FineTuned:
    """Train the recommender on train events; keeps the best validation epoch."""
    result = fine_tune(prepared, vectors_path, settings, out_dir)
    get_run_logger().info(
        "fine-tuned %d epochs in %.1f s; best epoch %d (valid NDCG@10 %s)",
        len(result.losses),
        result.seconds,
        result.best_epoch,
        f"{max(result.valid_scores):.4f}" if result.valid_scores else "n/a",
    )
    return result


@task(
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def build_index(model_dir: Path, vectors_path: Path, settings: Settings, out_dir: Path) -> Path:
    """faiss index over the fine-tuned item vectors."""
    path = build_item_index(model_dir, vectors_path, settings, out_dir)
    get_run_logger().info("index written to %s", path)
    return path
