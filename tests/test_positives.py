"""What counts as a positive (data.positive_min_weight) is used the same way everywhere."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tailor import columns as C
from tailor.data.sources import generate_synthetic
from tailor.evaluation.compare import Exam
from tailor.models.baselines import fit_baseline
from tailor.models.bundle import Bundle
from tailor.ranking.rank import RankPolicy
from tailor.serving.batch import compute_recommendations
from tailor.settings import DataSettings, SyntheticSettings
from tailor.stages.data import all_interactions, load_histories
from tests.conftest import new_workdir, tiny_settings, train_tiny_bundle


@pytest.fixture(scope="module")
def rated(tmp_path_factory, mlflow_template):
    """Synthetic events with seeded ratings 1-5, positives from 4, trained tiny."""
    root = tmp_path_factory.mktemp("rated")
    work = new_workdir(root, mlflow_template)
    raw = generate_synthetic(
        SyntheticSettings(n_users=60, n_items=80, n_topics=4, events_per_user=16), seed=5
    )
    ratings = np.random.default_rng(5).integers(1, 6, raw.interactions.height)
    events = raw.interactions.with_columns(pl.Series(C.WEIGHT, ratings.astype(str)))
    events.write_parquet(root / "events.parquet")
    raw.items.write_parquet(root / "items.parquet")
    settings = tiny_settings(
        work,
        data={
            "source": "files",
            "interactions_path": str(root / "events.parquet"),
            "items_path": str(root / "items.parquet"),
            "text_template": "{title}. {description}",
            "columns": {"weight": "weight"},
            "positive_min_weight": 4.0,
        },
    )
    prepared, _, _, folder = train_tiny_bundle(settings, root)
    return settings, prepared, folder


def test_the_source_decides_the_default_threshold():
    assert DataSettings().positive_threshold == 3.0  # MovieLens: ratings 3 to 5
    assert DataSettings(source="synthetic").positive_threshold is None
    assert DataSettings(positive_min_weight=0).positive_threshold is None  # every event
    assert DataSettings(source="synthetic", positive_min_weight=3).positive_threshold == 3


def test_targets_are_positives_and_history_is_every_event(rated):
    _, prepared, _ = rated
    hist = load_histories(prepared)
    warm = pl.read_parquet(prepared.interactions)
    # Some training events are not positives: they are history, not targets.
    assert 0 < sum(int((~m).sum()) for m in hist.train_liked) < sum(len(m) for m in hist.train)
    items = pl.read_parquet(prepared.items)[C.ITEM_ID].to_list()
    for split, targets, users in (
        (C.TEST, hist.test_targets, hist.test_users),
        (C.VALID, hist.valid_targets, hist.valid_users),
    ):
        first = (
            warm.filter(pl.col(C.SPLIT) == split)
            .sort([C.USER_ID, "seq"])
            .group_by(C.USER_ID, maintain_order=True)
            .first()
        )
        assert first[C.POSITIVE].all()
        by_user = dict(zip(first[C.USER_ID], first[C.ITEM_ID], strict=True))
        assert [items[t] for t in targets] == [by_user[hist.users[u]] for u in users]
    # The cold-item cases are positive events only.
    cold = pl.read_parquet(prepared.cold_events)
    assert len(hist.cold_targets) <= cold[C.POSITIVE].sum()


def test_popularity_and_baselines_count_positives_only(rated):
    settings, prepared, folder = rated
    hist = load_histories(prepared)
    exam = Exam(hist, settings.eval)
    positives = np.bincount(np.concatenate(hist.train_positives()), minlength=hist.n_items)
    everything = np.bincount(np.concatenate(hist.train), minlength=hist.n_items)
    assert not np.array_equal(positives, everything)
    np.testing.assert_array_equal(exam.popularity, positives)
    np.testing.assert_array_equal(Bundle(folder).items["popularity"].to_numpy(), positives)
    popular = fit_baseline("most-popular", {}, hist.train_positives(), hist.n_items, None)
    np.testing.assert_array_equal(popular.popularity, positives)


def test_reasons_never_call_a_disliked_item_liked(rated):
    _, prepared, folder = rated
    bundle = Bundle(folder)
    interactions = all_interactions(prepared)
    recs = compute_recommendations(bundle, interactions, RankPolicy(10))
    liked = {
        (u, label)
        for u, label, ok in interactions.join(bundle.items.select(C.ITEM_ID, C.LABEL), on=C.ITEM_ID)
        .select(C.USER_ID, C.LABEL, C.POSITIVE)
        .iter_rows()
        if ok
    }
    cited = [
        (user, reason.removeprefix("because you liked "))
        for user, reason in recs.select(C.USER_ID, C.REASON_TEXT).iter_rows()
        if reason.startswith("because you liked ")
    ]
    assert len(cited) > 100
    assert all(pair in liked for pair in cited)
