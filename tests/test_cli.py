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
