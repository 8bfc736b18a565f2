"""Register a bundle as an MLflow model version and move the champion alias through a gate."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
from mlflow.exceptions import MlflowException

from tailor.tracking.pyfunc import TailorModel
from tailor.tracking.record import Record
from tailor.tracking.runs import client_for

log = logging.getLogger(__name__)

PIP_REQUIREMENTS = [
    # Explicit, so MLflow does not spend seconds inferring them in a subprocess.
    "tailor",
    "torch>=2.4",
    "faiss-cpu>=1.9",
    "polars>=1.20",
    "numpy>=1.26",
    "pandas",
    "mlflow>=3.5,<4",
]


@dataclass(frozen=True)
class ChampionScore:
    """The current champion measured on a new run's test cases."""

    version: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class GateDecision:
    version: str
    promoted: bool
    metric: str
    value: float
    champion_version: str | None  # the champion before this decision
    champion_value: float | None
    reason: str

    def record(self) -> Record:
        return Record(
            tags={
                "model_version": self.version,
                "promoted": str(self.promoted),
                "gate": self.reason,
            }
        )


def decide_promotion(value: float, champion_value: float | None, metric: str) -> tuple[bool, str]:
    """The first version always wins; later ones win when not worse than the champion."""
    if champion_value is None:
        return True, "no champion yet"
    if math.isnan(value):
        return False, f"{metric} is NaN"
    if value >= champion_value:
        return True, f"{metric} {value:.4f} >= champion's {champion_value:.4f}"
    return False, f"{metric} {value:.4f} < champion's {champion_value:.4f}"


def champion(client, model_name: str, alias: str):
    """The model version behind the alias, or None."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def register_bundle(
    client,
    run_id: str,
    bundle_dir: Path,
    model_name: str,
    alias: str,
    metric: str,
    value: float,
    tags: dict[str, str] | None = None,
    champion_score: tuple[str, float] | None = None,
) -> GateDecision:
    """Log the bundle as a pyfunc model of `run_id`, register it, and apply the gate.

    `champion_score` is (version, value): the current champion measured on this run's own
    test cases (`tailor.pipeline.score_champion`), so both sides sat the same exam. Without
    it, the value stored on the champion's version when it was registered is used.
    """
    current = champion(client, model_name, alias)
    current_value = None
    moved = False
    if current is not None and champion_score is not None:
        moved = str(current.version) != str(champion_score[0])
        current_value = float(champion_score[1])
    elif current is not None and metric in current.tags:
        current_value = float(current.tags[metric])

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        info = _log(model_name, bundle_dir, TailorModel())
    else:
        with mlflow.start_run(run_id=run_id, nested=active is not None):
            info = _log(model_name, bundle_dir, TailorModel())
    version = str(info.registered_model_version)
    client.set_model_version_tag(model_name, version, metric, repr(float(value)))
    client.set_model_version_tag(model_name, version, "run_id", run_id)
    for key, tag_value in (tags or {}).items():
        client.set_model_version_tag(model_name, version, key, tag_value)

    promoted, reason = decide_promotion(value, current_value, metric)
    if moved:
        # Another run promoted a version after ours scored the champion: our comparison is
        # against a model that is no longer the champion, so it cannot decide.
        promoted = False
        reason = f"champion moved to version {current.version} during this run; not compared"
    elif current is not None and champion_score is not None:
        reason += " (champion re-scored on this run's test cases)"
    if promoted:
        client.set_registered_model_alias(model_name, alias, version)
    log.info(
        "model %s version %s: %s (%s)",
        model_name,
        version,
        "promoted" if promoted else "kept out",
        reason,
    )
    return GateDecision(
        version=version,
        promoted=promoted,
        metric=metric,
        value=value,
        champion_version=None if current is None else str(current.version),
        champion_value=current_value,
        reason=reason,
    )


def _log(model_name: str, bundle_dir: Path, python_model):
    return mlflow.pyfunc.log_model(
        name="recommender",
        python_model=python_model,
        artifacts={"bundle": str(bundle_dir)},
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=model_name,
    )


def load_bundle(tracking_uri: str, model_name: str, version: str):
    """Load a registered version's bundle (through the pyfunc, so any store works)."""
    client_for(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    return model.unwrap_python_model().bundle


def resolve_version(client, model_name: str, alias: str, version: str | None) -> str:
    """An explicit version, or the one behind the alias; a clear error when there is none."""
    if version is not None:
        return str(client.get_model_version(model_name, version).version)
    current = champion(client, model_name, alias)
    if current is None:
        raise LookupError(
            f"registered model {model_name!r} has no version with alias {alias!r}: "
            "run the training flow first (tailor train)"
        )
    return str(current.version)
