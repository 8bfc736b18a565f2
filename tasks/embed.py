from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.context import TaskRunContext

from tailor.settings import Settings
from tailor.stages import embed as stage
from tailor.stages.data import PreparedData
from tailor.stages.embed import EmbeddedItems
from tasks.common import stage_task


def _embedding_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """Same texts and encoder settings -> same vectors, across runs.

    The result points at a content-addressed .npy in the workdir cache; when that file is gone
    the key is withheld so the task runs again instead of returning a dangling path.
    """
    settings: Settings = parameters["settings"]
    key = stage.item_texts_key(Path(parameters["items_path"]), settings)
    if not (settings.cache_dir / "item_vectors" / f"{key}.npy").is_file():
        return None
    return f"embed-{key}"


@stage_task(cache_key_fn=_embedding_cache_key, persist_result=True)
def embed_items(items_path: Path, settings: Settings) -> EmbeddedItems:
    """Language-model vectors for every item; only new or changed texts reach the encoder."""
    result = stage.embed_items(items_path, settings)
    get_run_logger().info(
        "embedded %d item texts, reused %d from cache (%s)",
        result.n_embedded,
        result.n_reused,
        result.model_id,
    )
    return result


@stage_task()
def tune_encoder(prepared: PreparedData, settings: Settings) -> Settings:
    """Settings whose encoder is tuned on this run's training events (when enabled)."""
    tuned = stage.tune_encoder(prepared, settings)
    if tuned.embed.model != settings.embed.model:
        get_run_logger().info("item texts will be read by the tuned encoder %s", tuned.embed.model)
    return tuned


@stage_task()
def plan_embedding(items_path: Path, settings: Settings, work_dir: Path) -> stage.EmbedPlan:
    """The item texts the cache lacks, in shards."""
    return stage.plan_embedding(items_path, settings, work_dir)


@stage_task(task_run_name="embed-shard-{shard}")
def embed_shard(plan: stage.EmbedPlan, shard: int, settings: Settings) -> int:
    """One shard of new texts through the encoder, into the cache."""
    return stage.embed_shard(plan, shard, settings)
