"""The child processes beside the flow (the baselines', the production fit's): how they share
the cores, and how they fail."""

from __future__ import annotations

import json

import pytest

from tailor.settings import Settings
from tailor.stages.baselines import fit_baselines_in_child
from tailor.stages.child import settings_for_child, side_by_side
from tailor.stages.data import prepare_data
from tailor.stages.train import Trained, train_production_in_child
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


def test_a_failing_production_child_raises_with_the_end_of_its_log(tmp_path):
    settings = tiny_settings(tmp_path)
    prepared = prepare_data(settings, tmp_path / "data")
    nothing = tmp_path / "no-model"
    trained = Trained(nothing, nothing, [], [], [], threads=1, best_epoch=2, seconds=0.0)
    with pytest.raises(RuntimeError, match=r"production\.log ends") as failed:
        train_production_in_child(
            prepared, tmp_path / "missing.npy", trained, settings, tmp_path / "out"
        )
    assert "missing.npy" in str(failed.value)
    assert not (tmp_path / "out" / "production.json").exists()


def test_a_childs_settings_carry_no_key(tmp_path):
    settings = tiny_settings(
        tmp_path,
        tracking={"pseudonym_key": "pseudo-s3cret-0123456789"},
        serve={"write_keys": ["w-s3cret-0123456789ab"]},
    )
    sent = settings_for_child(settings)
    assert "s3cret" not in json.dumps(sent) and "*****" not in json.dumps(sent)
    received = Settings.model_validate(sent)  # what the child makes of it
    assert received.tracking.pseudonym_key is None and received.serve.write_keys == []
    assert received.train == settings.train and received.data == settings.data
