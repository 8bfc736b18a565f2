from pathlib import Path

from prefect import get_run_logger

from tailor.settings import IndexSettings
from tailor.stages import index as stage
from tasks.common import stage_task


@stage_task()
def build_index(
    model_dir: Path, vectors_path: Path, index: IndexSettings, seed: int, out_dir: Path
) -> Path:
    """faiss index over a trained model's item vectors."""
    path = stage.build_index(model_dir, vectors_path, index, seed, out_dir)
    get_run_logger().info("index written to %s", path)
    return path
