"""The baselines' child process: how it shares the cores, and how it fails."""

from __future__ import annotations

import pytest

from tailor.stages.baselines import fit_baselines_in_child, side_by_side
from tailor.stages.data import prepare_data
from tests.conftest import tiny_settings


def test_side_by_side_shares_free_cores_and_keeps_an_explicit_count(tmp_path):
    explicit = tiny_settings(tmp_path, train={"threads": 3})
    assert side_by_side(explicit).train.threads == 3
    auto = tiny_settings(tmp_path, train={"threads": "auto"})
    shared = side_by_side(auto, lanes=2)
    assert isinstance(shared.train.threads, int) and shared.train.threads >= 1
    assert side_by_side(auto, lanes=1000).train.threads == 1  # never fewer than one
    assert auto.train.threads == "auto"  # the caller's settings are left alone


def test_a_failing_child_raises_with_the_end_of_its_log(tmp_path):
    settings = tiny_settings(tmp_path)
    prepared = prepare_data(settings, tmp_path / "data")
    with pytest.raises(RuntimeError, match=r"baselines\.log ends") as failed:
        fit_baselines_in_child(prepared, tmp_path / "missing.npy", settings, tmp_path / "out")
    assert "missing.npy" in str(failed.value)
    assert not (tmp_path / "out" / "baselines.json").exists()
