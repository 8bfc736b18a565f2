"""Evaluation, the nightly refresh and the live service rank through one path: for the same
user, model and history they return the same top-k."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.evaluation.compare import Exam, rank_vector_model
from tailor.models.bundle import Bundle
from tailor.models.sequential import load_recommender
from tailor.serving.batch import bundle_policy, compute_recommendations
from tailor.serving.live import LiveModel
from tailor.serving.recommend import LiveQuery, recommend
from tailor.serving.state import LiveState
from tailor.stages.data import load_histories
from tests.conftest import tiny_settings, train_tiny_bundle


def test_evaluation_refresh_and_live_service_give_the_same_lists(workdir, tmp_path):
    settings = tiny_settings(workdir, train={"epochs": 3, "text_view_weight": 0.3})
    prepared, embedded, trained, folder = train_tiny_bundle(settings, tmp_path)
    bundle = Bundle(folder)
    hist = load_histories(prepared)
    exam = Exam(hist, settings.eval)
    k = exam.k
    users = [hist.users[r] for r in hist.test_users[:12]]
    histories = exam.cases["test"][0][:12]

    # Evaluation: the evaluation fit through an index over its item vectors.
    model = load_recommender(trained.model_dir, np.load(embedded.vectors), device="cpu")
    policy = exam.policy(settings.rerank)
    evaluated = rank_vector_model(model, histories, policy, settings.index, settings.seed)

    # The nightly refresh: the same histories as events.
    rows = [
        (user, bundle.item_ids[p], datetime.fromtimestamp(1_600_000_000 + t, UTC))
        for user, history in zip(users, histories, strict=True)
        for t, p in enumerate(history.tolist())
    ]
    events = pl.DataFrame(rows, schema=[C.USER_ID, C.ITEM_ID, C.TIMESTAMP], orient="row")
    nightly = compute_recommendations(
        bundle, events, bundle_policy(bundle, k, settings.rerank, settings.eval.head_share)
    )

    # The live service: the same users with the same histories.
    live = LiveModel(Bundle(folder), "candidate", settings)
    state = LiveState(
        histories={
            u: [bundle.item_ids[p] for p in h] for u, h in zip(users, histories, strict=True)
        },
        profiles={},
        items={},
    )
    assert settings.rerank.strength > 0  # the comparison includes the tail-aware re-ranking
    for row, user in enumerate(users):
        expected = [bundle.item_ids[p] for p in evaluated.items[row] if p >= 0]
        listed = nightly.filter(pl.col(C.USER_ID) == user).sort(C.RANK)[C.ITEM_ID].to_list()
        served = [i.item_id for i in recommend(live, state, LiveQuery(user_id=user, k=k), {}).items]
        assert len(expected) == k
        assert listed == expected, user
        assert served == expected, user
