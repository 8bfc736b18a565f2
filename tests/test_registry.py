"""The promotion gate and run bookkeeping on a real MLflow SQLite store."""

from __future__ import annotations

import math

import pytest

from tailor.tracking.registry import champion, decide_promotion, resolve_version
from tailor.tracking.runs import client_for, ensure_experiment, finish_run, start_or_resume_run


def test_gate_rules():
    assert decide_promotion(0.10, None, "m") == (True, "no champion yet")
    assert decide_promotion(0.10, 0.10, "m")[0]  # not worse wins
    assert decide_promotion(0.11, 0.10, "m")[0]
    assert not decide_promotion(0.09, 0.10, "m")[0]
    assert not decide_promotion(math.nan, 0.10, "m")[0]


def test_retried_flow_run_reuses_its_mlflow_run(settings):
    client = client_for(settings.tracking_uri)
    experiment = ensure_experiment(client, "exp", settings.artifact_root)
    assert ensure_experiment(client, "exp", settings.artifact_root) == experiment
    assert client.get_experiment(experiment).artifact_location.startswith("file:///")
    first = start_or_resume_run(client, experiment, "flow-run-1", "train")
    finish_run(client, first, ok=False)
    again = start_or_resume_run(client, experiment, "flow-run-1", "train")
    other = start_or_resume_run(client, experiment, "flow-run-2", "train")
    assert again == first != other
    assert client.get_run(first).info.status == "RUNNING"


def test_no_champion_gives_a_clear_error(settings):
    client = client_for(settings.tracking_uri)
    assert champion(client, "nothing-here", "champion") is None
    with pytest.raises(LookupError, match="run the training flow first"):
        resolve_version(client, "nothing-here", "champion", None)
