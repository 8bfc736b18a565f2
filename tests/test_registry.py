"""The promotion gate and run bookkeeping on a real MLflow SQLite store."""

from __future__ import annotations

import math

import pytest

from tailor.tracking.registry import Comparison, champion, decide_promotion, resolve_version
from tailor.tracking.runs import client_for, ensure_experiment, finish_run, start_or_resume_run


def _compared(champion_value, candidate_value, basis="same exam"):
    return Comparison("1", basis, "m", champion_value, candidate_value, 100, "test cases")


def test_gate_rules():
    assert decide_promotion("m", 0.10, None) == (True, "no champion yet")
    assert decide_promotion("m", 0.10, _compared(0.10, 0.10))[0]  # not worse wins
    assert decide_promotion("m", 0.10, _compared(0.10, 0.11))[0]
    assert not decide_promotion("m", 0.10, _compared(0.10, 0.09))[0]
    # A NaN or missing metric never promotes, on either side, even without a champion.
    assert not decide_promotion("m", math.nan, None)[0]
    assert not decide_promotion("m", None, None)[0]
    assert not decide_promotion("m", 0.10, _compared(math.nan, 0.10))[0]
    assert not decide_promotion("m", 0.10, _compared(0.10, None))[0]
    # No like-for-like cases: kept out, with the reason.
    promoted, reason = decide_promotion("m", 0.50, _compared(None, None, basis="none"))
    assert not promoted and "like-for-like" in reason


def test_only_not_found_means_no_champion(settings, monkeypatch):
    from mlflow.exceptions import MlflowException

    client = client_for(settings.tracking_uri)
    assert champion(client, "nothing-here", "champion") is None  # no such model
    client.create_registered_model("empty")
    assert champion(client, "empty", "champion") is None  # a model, no alias

    def broken(*args, **kwargs):
        raise MlflowException("database is locked", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(client, "get_registered_model", broken)
    with pytest.raises(MlflowException, match="locked"):
        champion(client, "empty", "champion")


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
