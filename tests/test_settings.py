from __future__ import annotations

import pytest
from pydantic import ValidationError

from tailor.settings import Settings, load_settings


def test_defaults_run_movielens_small():
    s = Settings()
    assert s.data.source == "movielens-100k"
    assert s.refresh.k == 20 and s.eval.ks == [10, 20]
    assert s.tracking_uri.startswith("sqlite:///") and s.tracking_uri.endswith("mlflow.db")


def test_precedence_preset_file_env_override(tmp_path, monkeypatch):
    config = tmp_path / "tailor.toml"
    config.write_text("[train]\nepochs = 9\ndim = 48\n[refresh]\nk = 7\n")
    monkeypatch.setenv("TAILOR_TRAIN__DIM", "40")
    s = load_settings(config, preset="tiny", refresh={"k": 3})
    assert s.data.source == "synthetic"  # preset
    assert s.train.epochs == 9  # file over preset
    assert s.train.dim == 40  # environment over file
    assert s.refresh.k == 3  # explicit over everything
    assert s.train.layers == 1  # preset field the file did not touch


def test_bad_values_are_named():
    with pytest.raises(ValidationError, match="epochs"):
        load_settings(train={"epochs": 0})
    with pytest.raises(ValidationError, match="interactions_path"):
        load_settings(data={"source": "files"})
    with pytest.raises(ValidationError, match="must include 10 and 20"):
        load_settings(eval={"ks": [5, 10]})
    assert load_settings(eval={"ks": [5, 10, 20]}).eval.ks == [5, 10, 20]
    with pytest.raises(ValidationError, match="event_floor"):
        load_settings(serve={"event_floor": "last tuesday"})
    with pytest.raises(ValueError, match="unknown preset"):
        load_settings(preset="huge")
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path_missing := __import__("pathlib").Path("/nonexistent/t.toml"))
    del tmp_path_missing


def test_flat_settings_for_mlflow_params():
    flat = Settings().flat()
    assert flat["train.epochs"] == 12 and flat["embed.model"] == "all-MiniLM-L6-v2"
