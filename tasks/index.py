from pathlib import Path

from prefect import get_run_logger

from tailor.settings import IndexSettings
from tailor.stages import index as stage
from tailor.stages.data import PreparedData
from tailor.stages.index import BuiltIndex
from tasks.common import stage_task


@stage_task()
def build_index(
    model_dir: Path,
    vectors_path: Path,
    index: IndexSettings,
    seed: int,
    out_dir: Path,
    prepared: PreparedData | None = None,
) -> BuiltIndex:
    """faiss index over a trained model's item vectors, its depth tuned to a recall."""
    built = stage.build_index(model_dir, vectors_path, index, seed, out_dir, prepared)
    depth = built.depth
    get_run_logger().info(
        "%s index over %d items written to %s; recall@%d %.4f at %s",
        built.kind,
        built.n_items,
        built.path,
        depth.k,
        depth.recall,
        depth.values or "exact search",
    )
    return built
