"""Cold start measured through the live service's own code (`tailor.serving`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.data.protocol import Histories
from tailor.evaluation.metrics import paired_bootstrap
from tailor.models.bundle import Bundle
from tailor.serving.encoder import TextVectors, has_text_space
from tailor.serving.live import LiveModel
from tailor.serving.profiles import ProfilePool
from tailor.serving.state import profile_text
from tailor.settings import Settings


def evaluate_cold_start(
    hist: Histories, users: pl.DataFrame | None, bundle_dir: Path, settings: Settings
) -> tuple[dict[str, float], str]:
    """Cold start measured through the live service's own code (`tailor.serving`).

    Returns the metrics and a markdown summary.

    - New users: each test user is treated as unknown (history hidden); their vector is the
      profile-neighbour mean of the other users' vectors, as `POST /recommend` with only a
      profile computes it. Compared with most-popular on the same test events.
    - New items: the held-out cold items are removed from the catalogue and inserted back the
      way `POST /items` does (text -> encoder -> text-view vector -> index), then the cold-item
      cases of the offline protocol are ranked. The same recall as offline means the insert
      path loses nothing.
    """
    bundle = Bundle(bundle_dir, device="cpu")
    embed = settings.embed.model_validate(bundle.settings.get("embed", {}))
    # The encoder the service would use (settings.serve), so this measures the service path.
    texts = TextVectors(
        embed.model_copy(update={"device": "auto"}),
        cache_size=0,
        backend=settings.serve.encoder_backend,
        cache_dir=settings.cache_dir,
    )
    metrics: dict[str, float] = {}
    lines = [f"Cold start through the service path (recall@{max(settings.eval.ks)}).", ""]
    for part in (new_users, new_items):
        found, text = part(hist, users, bundle, bundle_dir, texts, settings)
        metrics.update(found)
        lines += text
    return metrics, "\n".join(lines)


def _recall(found: np.ndarray, targets: list[str], model: LiveModel) -> np.ndarray:
    ids = [[model.item_ids[p] for p in row if p >= 0] for row in found]
    return np.array([t in row for t, row in zip(targets, ids, strict=True)], dtype=float)


def new_users(
    hist: Histories,
    users: pl.DataFrame | None,
    bundle: Bundle,
    bundle_dir: Path,
    texts: TextVectors,
    settings: Settings,
) -> tuple[dict[str, float], list[str]]:
    """Each test user with a profile, history hidden, ranked from the profile alone."""
    k, strength = max(settings.eval.ks), settings.rerank.strength
    serve = settings.serve
    present = [f for f in serve.profile_fields if users is not None and f in users.columns]
    if not present or not len(hist.test_users):
        return {}, []
    model = LiveModel(bundle, "candidate", settings)
    profiles = {
        row[C.USER_ID]: profile_text(row, present)
        for row in users.select(C.USER_ID, *present).iter_rows(named=True)
    }
    known = hist.train_and_valid()
    pool_rows = [r for r, u in enumerate(hist.users) if profiles.get(u) and len(known[r])]
    pool_users = [hist.users[r] for r in pool_rows]
    unique = sorted({profiles[u] for u in pool_users})
    vectors = dict(zip(unique, texts.encode(unique), strict=True))
    model.profiles = pool = ProfilePool(
        pool_users,
        np.stack([vectors[profiles[u]] for u in pool_users]),
        [known[r] for r in pool_rows],
        len(model.item_ids),
        serve.profile_neighbours,
        serve.profile_prior,
    )
    rows = [i for i, r in enumerate(hist.test_users) if hist.users[r] in pool.row]
    test_users = [hist.users[hist.test_users[i]] for i in rows]
    targets = [model.item_ids[hist.test_targets[i]] for i in rows]
    scores = model.profile_scores(
        np.stack([vectors[profiles[u]] for u in test_users]), exclude=test_users
    )
    ours = _recall(model.rank_dense(scores, [()] * len(rows), k, strength).items, targets, model)
    popular = {model.item_ids[p] for p in model.popular[:k]}
    theirs = np.array([t in popular for t in targets], dtype=float)
    gain, low, high = paired_bootstrap(
        ours, theirs, n_resamples=settings.eval.bootstrap_resamples, seed=settings.seed
    )
    metrics = {
        f"new_user_recall_at_{k}": float(ours.mean()),
        f"new_user_popular_recall_at_{k}": float(theirs.mean()),
        "new_user_gain_low": low,
        "new_user_gain_high": high,
    }
    return metrics, [
        f"New users (profile only: {', '.join(present)}; {len(rows)} test users, history "
        f"hidden, {serve.profile_neighbours} profile neighbours, prior {serve.profile_prior:g}):",
        "",
        "| ranking | recall | gain vs most-popular, 95 % interval |",
        "| --- | ---: | --- |",
        f"| profile neighbours | {ours.mean():.4f} | {gain:+.4f} [{low:+.4f}, {high:+.4f}] |",
        f"| most-popular | {theirs.mean():.4f} | |",
        "",
    ]


def new_items(
    hist: Histories,
    users: pl.DataFrame | None,
    bundle: Bundle,
    bundle_dir: Path,
    texts: TextVectors,
    settings: Settings,
) -> tuple[dict[str, float], list[str]]:
    """The held-out items removed, inserted back as `POST /items` does, then their cases."""
    k, strength = max(settings.eval.ks), settings.rerank.strength
    if not len(hist.cold_targets):
        return {}, []
    if not has_text_space(bundle):
        return {}, ["New items: not measured (item vectors came from a file, no encoder).", ""]
    cold_ids = [bundle.item_ids[p] for p in hist.cold_items]
    # A bundle of its own: inserting grows the model it wraps.
    model = LiveModel(Bundle(bundle_dir, device="cpu"), "candidate", settings, hidden=cold_ids)
    rows = [
        (i, bundle.items[C.TEXT][int(p)], bundle.labels[int(p)])
        for i, p in zip(cold_ids, hist.cold_items, strict=True)
    ]
    inserted, _ = model.upsert_items(rows, texts.encode([r[1] for r in rows]))
    targets = [bundle.item_ids[t] for t in hist.cold_targets]
    cold_users = model.user_vectors(hist.cold_histories)
    seen = [set(h.tolist()) for h in hist.cold_histories]
    inserted_recall = _recall(model.rank(cold_users, None, seen, k, strength).items, targets, model)
    offline = LiveModel(bundle, "candidate", settings)
    found = offline.rank(cold_users, None, seen, k, strength).items
    offline_recall = _recall(found, targets, offline)
    metrics = {
        f"inserted_cold_recall_at_{k}": float(inserted_recall.mean()),
        f"bundle_cold_recall_at_{k}": float(offline_recall.mean()),
    }
    return metrics, [
        f"New items: {len(inserted)} held-out items removed, then inserted like POST /items; "
        f"{len(targets)} cold-item events:",
        "",
        "| catalogue | cold-item recall |",
        "| --- | ---: |",
        f"| items inserted through the service | {inserted_recall.mean():.4f} |",
        f"| items in the bundle from training | {offline_recall.mean():.4f} |",
        "",
    ]
