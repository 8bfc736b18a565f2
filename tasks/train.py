from pathlib import Path

from prefect import get_run_logger

from tailor.pipeline import FineTuned, PreparedData, build_item_index, fine_tune
from tailor.settings import Settings
from tasks.common import stage_task


@stage_task()
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


@stage_task()
def build_index(model_dir: Path, vectors_path: Path, settings: Settings, out_dir: Path) -> Path:
    """faiss index over the fine-tuned item vectors."""
    path = build_item_index(model_dir, vectors_path, settings, out_dir)
    get_run_logger().info("index written to %s", path)
    return path
