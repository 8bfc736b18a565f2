from pathlib import Path

from prefect import get_run_logger

from tailor.settings import Settings
from tailor.stages import evaluate as stage
from tailor.stages.baselines import FittedBaselines, fit_baselines_in_child
from tailor.stages.data import PreparedData
from tailor.stages.evaluate import ColdStart, Draws, Evaluation
from tailor.stages.train import Trained
from tasks.common import stage_task


@stage_task()
def fit_baselines(
    prepared: PreparedData,
    vectors_path: Path,
    settings: Settings,
    out_dir: Path,
    frozen_vectors_path: Path | None = None,
) -> FittedBaselines:
    """The baselines' fits and searches, in a child process (submitted beside the fit)."""
    result = fit_baselines_in_child(prepared, vectors_path, settings, out_dir, frozen_vectors_path)
    get_run_logger().info(
        "baselines fitted in a child process in %.1f s on %d torch thread(s)",
        result.seconds,
        result.threads,
    )
    return result


@stage_task()
def evaluate_models(
    prepared: PreparedData,
    vectors_path: Path,
    trained: Trained,
    settings: Settings,
    out_dir: Path,
    frozen_vectors_path: Path | None = None,
    fitted: FittedBaselines | None = None,
) -> Evaluation:
    """The evaluation fit and every baseline under the default protocol."""
    result = stage.evaluate_models(
        prepared, vectors_path, trained, settings, out_dir, frozen_vectors_path, fitted
    )
    get_run_logger().info("evaluation:\n%s", result.table.read_text())
    return result


@stage_task()
def evaluate_cold_start(
    prepared: PreparedData, bundle_dir: Path, settings: Settings, out_dir: Path
) -> ColdStart:
    """New users (profile only) and new items (inserted like the service does), measured
    through the live service's code on this run's test cases."""
    result = stage.evaluate_cold_start(prepared, bundle_dir, settings, out_dir)
    get_run_logger().info("cold start:\n%s", result.table.read_text())
    return result


@stage_task()
def evaluate_draws(
    prepared: PreparedData,
    vectors_path: Path,
    evaluation: Evaluation,
    trained: Trained,
    settings: Settings,
    out_dir: Path,
) -> Draws:
    """Cold items and new users over `eval.draws` draws, one production-recipe fit each."""
    result = stage.evaluate_draws(prepared, vectors_path, evaluation, trained, settings, out_dir)
    get_run_logger().info("draws:\n%s", result.table.read_text())
    return result
