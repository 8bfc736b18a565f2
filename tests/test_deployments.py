"""deployments/prefect.yaml points at real flows and keeps the nightly schedule."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parent.parent


def _deployments() -> dict[str, dict]:
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


def test_every_entrypoint_is_a_flow_accepting_its_parameters():
    found = _deployments()
    assert {"nightly-refresh", "train", "train-and-refresh", "search"} <= set(found)
    for name, deployment in found.items():
        path, attr = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, attr)
        assert isinstance(flow, Flow), name
        accepted = set(flow.parameters.properties)
        assert set(deployment.get("parameters") or {}) <= accepted, name


def test_nightly_refresh_runs_at_two_with_a_timezone():
    schedules = _deployments()["nightly-refresh"]["schedules"]
    assert any(s.get("cron") == "0 2 * * *" and s.get("timezone") for s in schedules)
