"""Registered model versions: registration with lineage, the champion alias, the gate's rule."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
from mlflow.exceptions import MlflowException

from tailor.models.bundle import (
    DIGEST_TAG,
    Bundle,
    BundleIntegrityError,
    bundle_digest,
    verify_bundle,
)
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

NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


@dataclass(frozen=True)
class Comparison:
    """The champion and the candidate measured on the same cases, neither trained on them."""

    champion_version: str
    basis: str  # "same exam", "new data" or "none" (no like-for-like cases)
    metric: str
    champion_value: float | None
    candidate_value: float | None
    n_cases: int
    detail: str  # how the cases were chosen, for the decision's reason

    def record(self) -> Record:
        metrics = {"gate.n_cases": self.n_cases}
        if self.champion_value is not None:
            metrics[f"champion.{self.metric}"] = self.champion_value
        if self.candidate_value is not None:
            metrics[f"gate.candidate.{self.metric}"] = self.candidate_value
        return Record(
            metrics=metrics,
            tags={"gate.basis": self.basis, "gate.champion_version": self.champion_version},
        )


@dataclass(frozen=True)
class GateDecision:
    version: str
    promoted: bool
    metric: str
    value: float | None  # the candidate's value the decision used
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


def _bad(value: float | None) -> bool:
    return value is None or math.isnan(value)


def decide_promotion(
    metric: str, candidate_value: float | None, comparison: Comparison | None
) -> tuple[bool, str]:
    """The gate's rule (docs/ARCHITECTURE.md, "The champion gate").

    No champion: the candidate wins if its metric exists. Otherwise only a like-for-like
    comparison decides, and the candidate wins when it is not worse. A NaN or missing metric,
    on either side, never promotes.
    """
    if _bad(candidate_value):
        return False, f"{metric} is missing or NaN: never promoted"
    if comparison is None:
        return True, "no champion yet"
    if comparison.basis == "none":
        return False, f"no like-for-like cases to compare with the champion: {comparison.detail}"
    if _bad(comparison.candidate_value) or _bad(comparison.champion_value):
        return False, f"{metric} is missing or NaN on the compared cases ({comparison.detail})"
    ours, theirs = comparison.candidate_value, comparison.champion_value
    verdict = ">=" if ours >= theirs else "<"
    return (
        ours >= theirs,
        f"{metric} {ours:.4f} {verdict} champion {comparison.champion_version}'s {theirs:.4f} "
        f"({comparison.detail})",
    )


def champion(client, model_name: str, alias: str):
    """The model version behind the alias, or None when there is none.

    Only "not found" (no such registered model, or no version under the alias) means no
    champion; any other registry error propagates, so a flaky store never looks like an empty
    one and never lets a version be promoted by default.
    """
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as e:
        if e.error_code == NOT_FOUND:
            return None
        raise
    version = (registered.aliases or {}).get(alias)
    if version is None:
        return None
    return client.get_model_version(model_name, str(version))


def register_bundle(
    client, run_id: str, bundle_dir: Path, model_name: str, tags: dict[str, str]
) -> str:
    """Log the bundle as a pyfunc model of `run_id`, register it, tag it (with the digest of
    its checksums, which loading verifies); returns the version."""
    tags = {**tags, DIGEST_TAG: bundle_digest(bundle_dir)}
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        info = _log(model_name, bundle_dir, TailorModel())
    else:
        with mlflow.start_run(run_id=run_id, nested=active is not None):
            info = _log(model_name, bundle_dir, TailorModel())
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    return version


def promote(client, model_name: str, alias: str, version: str) -> None:
    client.set_registered_model_alias(model_name, alias, str(version))
    log.info("model %s version %s is now %s", model_name, version, alias)


def _log(model_name: str, bundle_dir: Path, python_model):
    return mlflow.pyfunc.log_model(
        name="recommender",
        python_model=python_model,
        artifacts={"bundle": str(bundle_dir)},
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=model_name,
    )


def load_bundle(tracking_uri: str, model_name: str, version: str, device: str = "cpu") -> Bundle:
    """A registered version's bundle, built from its files after checking them against the
    checksums recorded at registration. The pyfunc wrapper is never loaded: unpickling it
    would run whatever code the registry holds (the pyfunc is there for MLflow users)."""
    client = client_for(tracking_uri)
    mv = client.get_model_version(model_name, str(version))
    expected = (mv.tags or {}).get(DIGEST_TAG)
    if not expected:
        raise BundleIntegrityError(
            f"model {model_name!r} version {version} has no {DIGEST_TAG} tag (registered "
            "before bundles carried checksums): register it again to serve it"
        )
    folder = Path(tempfile.mkdtemp(prefix="tailor-bundle-"))
    try:
        downloaded = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_name}/{version}", dst_path=str(folder)
        )
        bundle_dir = Path(downloaded) / "artifacts" / "bundle"
        verify_bundle(bundle_dir, expected)
        return Bundle(bundle_dir, device=device)  # reads every file into memory
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
