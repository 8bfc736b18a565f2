"""The command line against a real store."""

from __future__ import annotations

import polars as pl

from tailor import columns as C
from tailor.cli import main
from tailor.serving.store import RecommendationStore


def test_recommend_prints_items_with_reasons(settings, capsys, monkeypatch):
    monkeypatch.setenv("TAILOR_WORKDIR", str(settings.workdir))
    store = RecommendationStore(settings.store_url)
    store.publish(
        pl.DataFrame(
            {
                C.USER_ID: ["42", "42"],
                C.ITEM_ID: ["7", "9"],
                C.RANK: [1, 2],
                C.SCORE: [0.9, 0.5],
                C.REASON_TEXT: ["because you liked Heat (1995)", "popular with everyone"],
                C.LABEL: ["Casino (1995)", "Fargo (1996)"],
            }
        ),
        model_version="3",
    )
    store.dispose()
    assert main(["recommend", "42"]) == 0
    out = capsys.readouterr().out
    assert "model version 3" in out
    assert "1. Casino (1995)" in out and "because you liked Heat (1995)" in out
    assert out.index("Casino") < out.index("Fargo")
    assert main(["recommend", "nobody"]) == 1
    assert "no recommendations" in capsys.readouterr().err


def test_recommend_before_any_refresh_says_what_to_do(settings, capsys, monkeypatch):
    monkeypatch.setenv("TAILOR_WORKDIR", str(settings.workdir))
    assert main(["recommend", "42"]) == 1
    assert "tailor run" in capsys.readouterr().err


_START_API = """
import threading, httpx
from flows.api import start_temporary_api
wait = start_temporary_api()
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
named = [t.name for t in threading.enumerate()]
wait()
print("thread", "tailor-prefect-api" in named)
print("running", server.running)
if server.running:
    print("health", httpx.get(server.api_url + "/health").status_code)
    server.stop()
"""


def _start_api_in_child(tmp_path, api_url: str | None, home: str = "prefect") -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env["TAILOR_CACHE_HOME"] = str(tmp_path / "cache")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    done = subprocess.run(
        [sys.executable, "-c", _START_API], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_temporary_api_starts_in_the_background_and_answers(tmp_path):
    import prefect

    out = _start_api_in_child(tmp_path, None)
    assert "thread True" in out and "running True" in out and "health 200" in out
    # The first start made the migrated template; a second new home starts from a copy of it.
    template = tmp_path / "cache" / f"prefect-{prefect.__version__}.db"
    assert template.is_file() and (tmp_path / "prefect" / "prefect.db").is_file()
    made = template.stat().st_mtime_ns
    out = _start_api_in_child(tmp_path, None, home="prefect-2")
    assert "running True" in out and "health 200" in out
    assert template.stat().st_mtime_ns == made
    assert _alembic_head(tmp_path / "prefect-2" / "prefect.db") == _alembic_head(template)


def _alembic_head(database) -> str:
    import sqlite3

    with sqlite3.connect(database) as con:
        return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_no_temporary_api_when_a_server_is_configured(tmp_path):
    out = _start_api_in_child(tmp_path, "http://127.0.0.1:9/api")
    assert "thread False" in out and "running False" in out
