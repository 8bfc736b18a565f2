from pathlib import Path

from prefect import get_run_logger

from tailor.settings import Settings
from tailor.stages import train as stage
from tailor.stages.data import PreparedData
from tailor.stages.train import ProductionFit, Trained
from tasks.common import stage_task


@stage_task()
def train_recommender(
    prepared: PreparedData, vectors_path: Path, settings: Settings, out_dir: Path
) -> Trained:
    """The evaluation fit: train events, validated per epoch, refit on train + validation."""
    result = stage.train_recommender(prepared, vectors_path, settings, out_dir)
    scores = result.valid_scores
    get_run_logger().info(
        "trained %d epochs in %.1f s; kept epoch %d (valid NDCG@10 %s; best %s)",
        len(result.losses),
        result.seconds,
        result.best_epoch,
        f"{scores[result.valid_epochs.index(result.best_epoch)]:.4f}"
        if result.best_epoch in result.valid_epochs
        else "n/a",
        f"{max(scores):.4f} at epoch {result.valid_epochs[scores.index(max(scores))]}"
        if scores
        else "n/a",
    )
    return result


@stage_task()
def train_production(
    prepared: PreparedData, vectors_path: Path, trained: Trained, settings: Settings, out_dir: Path
) -> ProductionFit:
    """The production fit: the evaluation fit's recipe on every event, its chosen epochs."""
    result = stage.train_production(prepared, vectors_path, trained, settings, out_dir)
    _log_production(result, "")
    return result


@stage_task()
def train_production_beside(
    prepared: PreparedData, vectors_path: Path, trained: Trained, settings: Settings, out_dir: Path
) -> ProductionFit:
    """`train_production` in a child process: submitted beside the evaluation stages."""
    result, seconds = stage.train_production_in_child(
        prepared, vectors_path, trained, settings, out_dir
    )
    _log_production(result, f" (a child process of {seconds:.1f} s)")
    return result


def _log_production(result: ProductionFit, where: str) -> None:
    get_run_logger().info(
        "production fit: %d member(s) x %d epochs (%d windows in all) on %d events of %d users "
        "in %.1f s%s",
        len(result.seeds),
        result.epochs,
        result.windows,
        result.n_events,
        result.n_users,
        result.seconds,
        where,
    )
