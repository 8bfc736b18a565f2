"""Shared fixtures: tiny settings, a real MLflow store per test, one Prefect harness per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Before anything imports Prefect: a throwaway home, no analytics, a patient server start.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="tailor-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# (TAILOR_TEST_* are the tests' own: where a test database is, for instance.)
for _key in [k for k in os.environ if k.startswith("TAILOR_") and not k.startswith("TAILOR_TEST_")]:
    del os.environ[_key]  # a developer's own settings must not leak into the tests
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
# The migrated Prefect database template, made once per session, never in the user's cache.
os.environ["TAILOR_CACHE_HOME"] = str(_SESSION_DIR / "cache")

from tailor.settings import Settings, load_settings  # noqa: E402


def tiny_settings(workdir: Path, **overrides) -> Settings:
    """Seconds-long runs on the seeded synthetic catalogue."""
    base = {
        "workdir": workdir,
        "data": {
            "source": "synthetic",
            "synthetic": {"n_users": 60, "n_items": 80, "n_topics": 4, "events_per_user": 12},
        },
        # One torch thread: `threads = auto` counts the cores idle when each fit starts, so two
        # fits compared in a test could run on different counts (sums in another order) when
        # anything else loads the machine.
        "train": {
            "epochs": 2,
            "dim": 16,
            "layers": 1,
            "heads": 2,
            "max_len": 10,
            "batch_size": 32,
            "threads": 1,
            # In the flow's process: a child process per run would cost seconds each.
            "production_beside": False,
        },
        "refresh": {"k": 5},
        "eval": {"baselines_beside": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_settings(**base)


# The tiny settings of a CLI or worker child process (600 users: enough for real blocks).
CHILD_RUN: dict = {
    "data": {
        "source": "synthetic",
        "synthetic": {"n_users": 600, "n_items": 80, "n_topics": 4, "events_per_user": 12},
    },
    "train": {"epochs": 1, "dim": 16, "layers": 1, "heads": 2, "max_len": 10, "batch_size": 32},
}


def write_toml(path: Path, settings: dict) -> Path:
    """Settings as a TOML file for a child process: top-level values, then one table per
    section (nested sections as dotted tables). Values are written as JSON, which TOML reads
    for the strings, numbers, booleans and lists used here."""
    import json

    lines: list[str] = []

    def table(name: str, values: dict) -> None:
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict))
        for k, v in values.items():
            if isinstance(v, dict):
                table(f"{name}.{k}", v)

    lines.extend(f"{k} = {json.dumps(v)}" for k, v in settings.items() if not isinstance(v, dict))
    for name, values in settings.items():
        if isinstance(values, dict):
            table(name, values)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def mlflow_template() -> Path:
    """Migrating a fresh MLflow SQLite store costs seconds: do it once, copy per test."""
    from tailor.tracking.runs import client_for

    path = _SESSION_DIR / "mlflow-template.db"
    client = client_for(f"sqlite:///{path}")
    client.search_experiments()
    return path


def new_workdir(root: Path, mlflow_template: Path) -> Path:
    """`root / "work"` with a migrated MLflow store in it."""
    work = root / "work"
    work.mkdir()
    shutil.copy(mlflow_template, work / "mlflow.db")
    return work


@pytest.fixture
def workdir(tmp_path: Path, mlflow_template: Path) -> Path:
    return new_workdir(tmp_path, mlflow_template)


@pytest.fixture
def settings(workdir: Path) -> Settings:
    return tiny_settings(workdir)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def encoder():
    """The real packaged MiniLM encoder, loaded once."""
    from tailor.models.encoder import TransformerEncoder

    return TransformerEncoder()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def train_tiny_bundle(settings: Settings, root: Path):
    """The stages of the train flow without Prefect: (prepared data, item vectors, evaluation
    fit, bundle folder of that fit)."""
    from tailor.stages.data import prepare_data
    from tailor.stages.embed import embed_items
    from tailor.stages.index import build_index
    from tailor.stages.register import bundle_model
    from tailor.stages.train import train_recommender

    prepared = prepare_data(settings, root / "data")
    embedded = embed_items(prepared.items, settings, progress=False)
    trained = train_recommender(prepared, embedded.vectors, settings, root, progress=False)
    index = build_index(
        trained.model_dir, embedded.vectors, settings.index, settings.seed, root, prepared
    )
    folder = bundle_model(prepared, embedded.vectors, trained.model_dir, index.path, settings, root)
    return prepared, embedded, trained, folder


def wait_ready(proc, url: str, timeout: float = 300, poll: float = 0.2):
    """Wait until the child process `proc` answers 200 at `url` (a service's /ready); fail if
    it exits first or never does."""
    import contextlib
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the service exited"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return proc
        assert time.monotonic() < deadline, "the service never became ready"
        time.sleep(poll)
