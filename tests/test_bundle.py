"""Bundle, the nightly batch and the registry on a trained tiny model (no Prefect needed)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tailor import columns as C
from tailor.models.bundle import Bundle, Lineage
from tailor.ranking.explain import POPULAR_REASON
from tailor.ranking.rank import RankPolicy, rank_histories
from tailor.serving.batch import compute_recommendations
from tailor.stages.data import load_histories
from tailor.stages.refresh import summarize_recommendations
from tailor.tracking.registry import champion, load_bundle, promote, register_bundle
from tailor.tracking.runs import client_for, ensure_experiment, start_or_resume_run
from tests.conftest import train_tiny_bundle


@pytest.fixture
def trained(settings, tmp_path):
    prepared, _, _, folder = train_tiny_bundle(settings, tmp_path)
    return prepared, folder


def test_recommendations_exclude_seen_items_and_explain_themselves(trained):
    prepared, folder = trained
    bundle = Bundle(folder)
    interactions = pl.read_parquet(prepared.interactions)
    recs = compute_recommendations(bundle, interactions, RankPolicy(5), extra_users=["newcomer"])
    seen = set(zip(interactions[C.USER_ID], interactions[C.ITEM_ID], strict=True))
    pairs = set(zip(recs[C.USER_ID], recs[C.ITEM_ID], strict=True))
    assert not pairs & seen
    assert recs.group_by(C.USER_ID).len()["len"].to_list() == [5] * recs[C.USER_ID].n_unique()
    newcomer = recs.filter(pl.col(C.USER_ID) == "newcomer")
    assert newcomer[C.REASON_TEXT].to_list() == [POPULAR_REASON] * 5
    # The most popular train item comes first for a user with no history.
    assert newcomer[C.ITEM_ID][0] == bundle.item_ids[int(np.argmax(bundle.items["popularity"]))]
    regular = recs.filter(pl.col(C.USER_ID) != "newcomer")
    labels = set(bundle.labels)
    for reason in regular[C.REASON_TEXT].head(20).to_list():
        assert (
            reason.startswith("because you liked ")
            and reason.removeprefix("because you liked ") in labels
        )


def test_index_search_matches_exact_scoring(trained):
    prepared, folder = trained
    bundle = Bundle(folder)
    hist = load_histories(prepared)
    histories = hist.train[:10]
    via_index = rank_histories(bundle.model, bundle.index, histories, RankPolicy(5)).items
    scores = bundle.model.score(histories)
    for row, h in enumerate(histories):
        scores[row, h] = -np.inf
    exact = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert (via_index == exact).mean() > 0.95  # ties may swap neighbours


def test_summary_and_plot(trained, tmp_path):
    prepared, folder = trained
    bundle = Bundle(folder)
    recs = compute_recommendations(bundle, pl.read_parquet(prepared.interactions), RankPolicy(5))
    summary = summarize_recommendations(recs, bundle, 0.2, tmp_path / "out")
    assert 0 < summary["coverage"] <= 1 and 0 <= summary["tail_share"] <= 1
    assert summary["rows"] == recs.height
    assert (tmp_path / "out" / "long_tail.png").stat().st_size > 1000


def test_registered_bundle_round_trips_with_its_lineage(trained, settings):
    _, folder = trained
    client = client_for(settings.tracking_uri)
    experiment = ensure_experiment(client, "t", settings.artifact_root)
    lineage = Lineage(
        "fp",
        "exam",
        "2020-01-01T00:00:00+00:00",
        "2021-01-01T00:00:00+00:00",
        "eval-run",
        "prod-run",
        {"test_ndcg_at_10": 0.25, "test_x": float("nan")},
    )
    run = start_or_resume_run(client, experiment, None, "r")
    version = register_bundle(client, run, folder, "m", lineage.tags())
    assert champion(client, "m", "champion") is None  # registered, not promoted
    promote(client, "m", "champion", version)
    current = champion(client, "m", "champion")
    assert str(current.version) == version
    back = Lineage.from_tags(current.tags)
    assert back.exam == "exam" and back.metrics["test_ndcg_at_10"] == 0.25
    assert back.metrics["test_x"] != back.metrics["test_x"]  # NaN survives the round trip
    assert Lineage.from_tags({}) is None
    loaded = load_bundle(settings.tracking_uri, "m", version)
    assert loaded.item_ids == Bundle(folder).item_ids


def test_promote_by_hand_moves_the_alias(trained, settings, monkeypatch, capsys):
    from tailor.cli import main

    _, folder = trained
    client = client_for(settings.tracking_uri)
    experiment = ensure_experiment(client, settings.tracking.experiment, settings.artifact_root)
    run = start_or_resume_run(client, experiment, None, "r")
    name = settings.tracking.model_name
    version = register_bundle(client, run, folder, name, {})
    assert champion(client, name, "champion") is None
    monkeypatch.setenv("TAILOR_WORKDIR", str(settings.workdir))
    assert main(["promote", version]) == 0
    assert str(champion(client, name, "champion").version) == version
    assert "promoted by hand" in capsys.readouterr().out


class _Planted:
    """Unpickling this writes a file: the proof that something was unpickled."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (_touch, (self.target,))


def _touch(path: str) -> None:
    with open(path, "w") as fh:
        fh.write("unpickled")


def test_loading_a_version_never_unpickles_and_checks_every_file(trained, settings, tmp_path):
    import pickle
    import shutil

    from tailor.models.bundle import CHECKSUMS, BundleIntegrityError, verify_bundle

    _, folder = trained
    client = client_for(settings.tracking_uri)
    experiment = ensure_experiment(client, "t", settings.artifact_root)
    run = start_or_resume_run(client, experiment, None, "r")
    version = register_bundle(client, run, folder, "m", {})
    # Whoever can write to the artifact store plants code in the pyfunc's pickle.
    marker = tmp_path / "pwned"
    pickles = list(settings.workdir.resolve().rglob("python_model.pkl"))
    assert pickles
    for path in pickles:
        path.write_bytes(pickle.dumps(_Planted(str(marker))))
    loaded = load_bundle(settings.tracking_uri, "m", version)
    assert loaded.item_ids == Bundle(folder).item_ids and not marker.exists()

    # A changed, added or removed file of the bundle is refused, naming it.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    digest = client.get_model_version("m", version).tags["tailor.bundle_sha256"]
    verify_bundle(copy, digest)
    items = copy / "items.parquet"
    data = bytearray(items.read_bytes())
    data[len(data) // 2] ^= 0xFF
    items.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=r"items\.parquet differs"):
        verify_bundle(copy, digest)
    shutil.copy(folder / "items.parquet", items)
    (copy / "extra.py").write_text("print('hi')")
    with pytest.raises(BundleIntegrityError, match=r"not registered: extra\.py"):
        verify_bundle(copy, digest)
    (copy / "extra.py").unlink()
    (copy / CHECKSUMS).write_text("{}")
    with pytest.raises(BundleIntegrityError, match="not the one registered"):
        verify_bundle(copy, digest)
    # The artifact store's copy tampered with: loading refuses it.
    stored = [p for p in settings.workdir.resolve().rglob("index.faiss") if "mlartifacts" in str(p)]
    assert stored
    for path in stored:
        path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(BundleIntegrityError, match=r"index\.faiss differs"):
        load_bundle(settings.tracking_uri, "m", version)
