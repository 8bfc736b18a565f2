"""Cold items and new users over several draws: how much of the estimate is the draw's luck.

One protocol run holds out one seeded set of cold items, and a handful of popular ones can
make most of its cold hits. Here each draw holds out its own seeded share of items (cold
items) and of users (new users), trains the production recipe (the epochs early stopping
chose, the served ensemble) on everything else, and measures:

- cold items: every positive event on a held-out item by a known user, ranked over the whole
  catalogue with the served re-ranking, against text-cosine (the id-only sequential baselines
  cannot rank an item they never trained on: 0 by construction); intervals come from an
  item-clustered bootstrap (whole items resampled, `clustered_bootstrap`);
- new users: their first 0, 1, 3 and 5 events (`eval.new_user_events`) as the whole history,
  scored on their next positives, against most-popular: at 0 events from their profile
  (profile neighbours, as the service does), from a short free-text description of tastes,
  and both; after k events from the history, with and without that description.

The description is made from the genres of the user's first five items (MovieLens has no
free-text profiles): it stands for what a user would type, and carries less than the events.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tailor import columns as C
from tailor.data.protocol import choose_cold_items, cold_item_cases, event_histories
from tailor.evaluation.compare import SEQUENTIAL, rank_vector_model
from tailor.evaluation.metrics import clustered_bootstrap, paired_bootstrap, per_user_metric
from tailor.models.baselines import fit_baseline
from tailor.models.sequential import fit_members
from tailor.ranking.rank import RankPolicy, rank_dense, rank_scores
from tailor.ranking.tail import head_mask, item_popularity
from tailor.serving.profiles import ProfilePool
from tailor.serving.state import profile_text
from tailor.settings import Settings

log = logging.getLogger(__name__)

TEXT_COSINE = "text-cosine"
MOST_POPULAR = "most-popular"
# How a new user is ranked (the service's choices for what it has): rows of the table.
PROFILE, FREE_TEXT, PROFILE_AND_TEXT = "profile", "free text", "profile + free text"
POPULAR_AND_TEXT = "most-popular + free text"
HISTORY, HISTORY_AND_TEXT = "history", "history + free text"

Encode = Callable[[list[str]], np.ndarray]


@dataclass
class Draw:
    """One draw's per-case results (arrays aligned within each dict)."""

    seed: int
    n_cold_items: int  # held out of training
    n_new_users: int  # held out of training and measured
    cold_targets: np.ndarray  # item position per cold case (the cluster of the bootstrap)
    cold_hits: dict[str, np.ndarray]  # model -> hit@k per cold case
    new_users: dict[tuple[int, str], np.ndarray]  # (events, ranking) -> recall@k per user
    seconds: float
    labels: list[str] = field(default_factory=list)  # per item position, for the hit table


def taste_description(texts: Sequence[str], top: int = 3) -> str | None:
    """'I like Comedy, Drama and Romance films.' from the 'Genres: ...' parts of item texts;
    None when the texts name no genres."""
    counts: Counter[str] = Counter()
    for text in texts:
        match = re.search(r"Genres:\s*([^.]+)", text)
        if match:
            counts.update(g.strip() for g in match.group(1).split(",") if g.strip())
    if not counts:
        return None
    names = [name for name, _ in counts.most_common(top)]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"I like {listed} films."


def choose_new_users(events: pl.DataFrame, share: float, min_events: int, seed: int) -> list[str]:
    """A seeded share of the users with at least `min_events` events and a positive after."""
    ordered = events.sort([C.USER_ID, C.TIMESTAMP], maintain_order=True)
    stats = ordered.group_by(C.USER_ID, maintain_order=True).agg(
        pl.len().alias("n"), pl.col(C.POSITIVE).slice(min_events).any().alias("later")
    )
    eligible = sorted(stats.filter((pl.col("n") > min_events) & pl.col("later"))[C.USER_ID])
    n = round(share * len(eligible))
    if n == 0:
        return []
    rng = np.random.default_rng(seed)
    return sorted(eligible[i] for i in rng.choice(len(eligible), size=n, replace=False))


def run_draw(
    events: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame | None,
    text_vectors: np.ndarray,
    settings: Settings,
    seed: int,
    epochs: int,
    encode: Encode,
    baseline_params: dict[str, dict[str, Any]] | None = None,
) -> Draw:
    """Hold out a seeded share of items and of users, train the production recipe on the rest
    (`epochs`, one member per seed as served), measure cold items and new users."""
    started = time.perf_counter()
    s = settings.eval
    k = max(s.ks)
    params = baseline_params or {}
    cold = set(choose_cold_items(events, s.cold_item_share, seed))
    most_events = max(s.new_user_events)
    new = set(choose_new_users(events, s.new_user_share, most_events, seed))
    known = events.filter(~pl.col(C.USER_ID).is_in(list(new)))
    warm = known.filter(~pl.col(C.ITEM_ID).is_in(list(cold)))
    known_users, histories, liked = event_histories(warm, items)
    positives = [h[m] for h, m in zip(histories, liked, strict=True)]
    n_items = items.height
    popularity = item_popularity(np.concatenate(positives), n_items)
    is_tail = ~head_mask(popularity, s.head_share)
    served = RankPolicy(k, settings.rerank.strength, settings.rerank.candidates, is_tail)
    plain = RankPolicy(k)

    train = settings.train.model_copy(update={"epochs": epochs})
    both = settings.train.refit and settings.train.ensemble
    seeds = [seed, seed + 1] if both else [seed]
    model, _, _, _ = fit_members(text_vectors, train, seeds, histories, liked)
    model.freeze()

    # Cold items: the known users' positive events on them, from their warm events before.
    position = {item: i for i, item in enumerate(items[C.ITEM_ID].to_list())}
    warm_frame = warm.sort([C.USER_ID, C.TIMESTAMP], maintain_order=True).with_columns(
        pl.col(C.ITEM_ID).replace_strict(position, return_dtype=pl.Int64).alias("pos")
    )
    cold_events = known.filter(pl.col(C.ITEM_ID).is_in(list(cold)))
    cold_histories, cold_targets = cold_item_cases(warm_frame, cold_events, position)
    cold_hits: dict[str, np.ndarray] = {}
    if len(cold_targets):
        top = rank_vector_model(model, cold_histories, served, settings.index, seed).items
        cold_hits[SEQUENTIAL] = per_user_metric(top, cold_targets, "recall", k)
        text_rec = fit_baseline(
            TEXT_COSINE, params.get(TEXT_COSINE, {}), positives, n_items, text_vectors
        )
        top = rank_dense(text_rec, cold_histories, plain).items
        cold_hits[TEXT_COSINE] = per_user_metric(top, cold_targets, "recall", k)

    new_users = _new_users(
        events.filter(pl.col(C.USER_ID).is_in(list(new))),
        items,
        users,
        known_users,
        histories,
        positives,
        model,
        text_vectors,
        settings,
        served,
        encode,
        popularity,
    )
    return Draw(
        seed=seed,
        n_cold_items=len(cold),
        n_new_users=len(new),
        cold_targets=cold_targets,
        cold_hits=cold_hits,
        new_users=new_users,
        seconds=time.perf_counter() - started,
        labels=items[C.LABEL].to_list(),
    )


def _new_users(
    new_events: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame | None,
    known_users: list[str],
    known_histories: list[np.ndarray],
    known_positives: list[np.ndarray],
    model,
    text_vectors: np.ndarray,
    settings: Settings,
    served: RankPolicy,
    encode: Encode,
    popularity: np.ndarray,
) -> dict[tuple[int, str], np.ndarray]:
    """Recall@k on each new user's next positives, from their first 0, 1, 3, 5 events."""
    s = settings.eval
    k, n_items = max(s.ks), items.height
    if new_events.height == 0:
        return {}
    first = max(s.new_user_events)
    names, histories, liked = event_histories(new_events, items)
    # Targets: the next positives after the first events (up to eval.new_user_targets).
    pairs = zip(histories, liked, strict=True)
    targets = [h[first:][m[first:]][: s.new_user_targets] for h, m in pairs]
    texts = items[C.TEXT].to_list()
    descriptions = [taste_description([texts[p] for p in h[:first]]) for h in histories]
    with_text = all(d is not None for d in descriptions)
    query = None
    if with_text:
        weight = settings.serve.query_weight
        query = weight * (encode(descriptions) @ text_vectors.T)  # (users, items)

    popular = fit_baseline(MOST_POPULAR, {}, known_positives, n_items, text_vectors)
    out: dict[tuple[int, str], np.ndarray] = {}

    def recall(top: np.ndarray) -> np.ndarray:
        found = [set(row[row >= 0].tolist()) for row in top]
        pairs = zip(found, targets, strict=True)
        return np.array([len(f & set(t.tolist())) / len(t) for f, t in pairs], dtype=float)

    pool, profiles = _profile_pool(users, known_users, items, known_histories, settings, encode)
    for n in s.new_user_events:
        seen = [h[:n] for h in histories]
        excluded = [set(x.tolist()) for x in seen]
        out[(n, MOST_POPULAR)] = recall(rank_dense(popular, seen, RankPolicy(k)).items)
        if n == 0:
            dense = None
            if pool is not None:
                vectors = encode([profiles.get(u, "") for u in names])
                dense = np.log(pool.shares(vectors, n_items) + 1e-6).astype(np.float32)
                out[(n, PROFILE)] = recall(rank_scores(dense, excluded, served).items)
            if query is not None:
                out[(n, FREE_TEXT)] = recall(rank_scores(query, excluded, served).items)
                # The description re-weighing popularity (log share of users, as profiles do).
                share = np.log(popularity / max(len(known_positives), 1) + 1e-6)
                blended = share.astype(np.float32) + query
                out[(n, POPULAR_AND_TEXT)] = recall(rank_scores(blended, excluded, served).items)
                if dense is not None:
                    both = dense + query
                    out[(n, PROFILE_AND_TEXT)] = recall(rank_scores(both, excluded, served).items)
            continue
        scores = model.user_vectors(seen) @ model.item_vectors().T
        out[(n, HISTORY)] = recall(rank_scores(scores, excluded, served).items)
        if query is not None:
            blended = scores + query
            out[(n, HISTORY_AND_TEXT)] = recall(rank_scores(blended, excluded, served).items)
    return out


def _profile_pool(
    users: pl.DataFrame | None,
    names: list[str],
    items: pl.DataFrame,
    known_histories: list[np.ndarray],
    settings: Settings,
    encode: Encode,
) -> tuple[ProfilePool | None, dict[str, str]]:
    """The known users' profiles and what they consumed, as the service's profile pool.

    `names[r]` is the user of `known_histories[r]` (the warm events the model trained on)."""
    serve = settings.serve
    present = [f for f in serve.profile_fields if users is not None and f in users.columns]
    if not present:
        return None, {}
    profiles = {
        row[C.USER_ID]: profile_text(row, present)
        for row in users.select(C.USER_ID, *present).iter_rows(named=True)
    }
    rows = [r for r, u in enumerate(names) if profiles.get(u) and len(known_histories[r])]
    if not rows:
        return None, profiles
    pool = ProfilePool(
        [names[r] for r in rows],
        encode([profiles[names[r]] for r in rows]),
        [known_histories[r] for r in rows],
        items.height,
        serve.profile_neighbours,
        serve.profile_prior,
    )
    return pool, profiles


# ---------------------------------------------------------------- summaries


def cold_summary(draws: Sequence[Draw], n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """Per draw and pooled: cold-item recall of each model with an item-clustered interval,
    the gain over text-cosine, and how concentrated the hits are (share of the top two items).
    """
    rows = []
    parts = [d for d in draws if d.cold_hits]
    for d in parts:
        rows.append(
            _cold_row(f"draw seed {d.seed}", d.cold_hits, d.cold_targets, n_resamples, seed)
        )
    if len(parts) > 1:
        # Pooled: clusters are (draw, item), so an item drawn twice counts as two clusters.
        hits = {m: np.concatenate([d.cold_hits[m] for d in parts]) for m in parts[0].cold_hits}
        clusters = np.concatenate([d.cold_targets + i * 10**9 for i, d in enumerate(parts)])
        rows.append(_cold_row(f"pooled ({len(parts)} draws)", hits, clusters, n_resamples, seed))
        means = np.array([r[SEQUENTIAL] for r in rows[:-1]])
        rows[-1]["spread"] = float(means.std(ddof=1))
    return rows


def _cold_row(name, hits, clusters, n_resamples, seed) -> dict[str, Any]:
    ours = hits[SEQUENTIAL]
    mean, low, high = clustered_bootstrap(ours, clusters, n_resamples, seed)
    row: dict[str, Any] = {"draw": name, "cases": len(ours), "items": len(np.unique(clusters))}
    row.update({SEQUENTIAL: mean, "low": low, "high": high})
    if TEXT_COSINE in hits:
        theirs = hits[TEXT_COSINE]
        gain, g_low, g_high = clustered_bootstrap(ours - theirs, clusters, n_resamples, seed)
        row.update({TEXT_COSINE: float(theirs.mean()), "gain": gain})
        row.update({"gain_low": g_low, "gain_high": g_high})
    hit_items = Counter(clusters[ours > 0].tolist())
    top_two = sum(n for _, n in hit_items.most_common(2))
    row["top_two_share"] = top_two / max(int((ours > 0).sum()), 1)
    row["hit_items"] = len(hit_items)
    return row


def new_user_summary(draws: Sequence[Draw], n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """Pooled over draws: each (events, ranking) against most-popular at the same events."""
    keys = [key for key in draws[0].new_users] if draws else []
    rows = []
    for n, ranking in keys:
        ours = np.concatenate(
            [d.new_users[(n, ranking)] for d in draws if (n, ranking) in d.new_users]
        )
        base = np.concatenate(
            [d.new_users[(n, MOST_POPULAR)] for d in draws if (n, ranking) in d.new_users]
        )
        row = {"events": n, "ranking": ranking, "users": len(ours), "recall": float(ours.mean())}
        if ranking != MOST_POPULAR:
            gain, low, high = paired_bootstrap(ours, base, n_resamples, seed)
            row.update({"popular": float(base.mean()), "gain": gain, "low": low, "high": high})
        rows.append(row)
    return rows


def draws_markdown(draws: Sequence[Draw], k: int, n_resamples: int, seed: int) -> str:
    lines = [
        f"## Cold items and new users over {len(draws)} draws",
        "",
        "Each draw holds out its own items and users and trains the production recipe on the rest.",
        "",
    ]
    cold = cold_summary(draws, n_resamples, seed)
    if cold:
        lines += [
            f"Cold-item recall@{k} (item-clustered bootstrap; SASRec-CE and GRU4Rec on ids: 0 "
            "by construction):",
            "",
            f"| draw | cases | items | {SEQUENTIAL} [95 %] | {TEXT_COSINE} | gain [95 %] | "
            "items with a hit | top-two share of hits |",
            "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: |",
        ]
        for r in cold:
            gain = (
                f"{r['gain']:+.4f} [{r['gain_low']:+.4f}, {r['gain_high']:+.4f}]"
                if "gain" in r
                else ""
            )
            spread = f" (sd over draws {r['spread']:.4f})" if "spread" in r else ""
            lines.append(
                f"| {r['draw']} | {r['cases']} | {r['items']} | {r[SEQUENTIAL]:.4f} "
                f"[{r['low']:.4f}, {r['high']:.4f}]{spread} | {r.get(TEXT_COSINE, 0.0):.4f} | "
                f"{gain} | {r['hit_items']} | {r['top_two_share']:.2f} |"
            )
        lines.append("")
    users = new_user_summary(draws, n_resamples, seed)
    if users:
        lines += [
            f"New users, recall@{k} on their next positives (pooled over draws; gain vs "
            "most-popular at the same events, paired bootstrap over users):",
            "",
            "| events known | ranking | users | recall | most-popular | gain [95 %] |",
            "| ---: | --- | ---: | ---: | ---: | --- |",
        ]
        for r in users:
            if r["ranking"] == MOST_POPULAR:
                continue
            lines.append(
                f"| {r['events']} | {r['ranking']} | {r['users']} | {r['recall']:.4f} | "
                f"{r['popular']:.4f} | {r['gain']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] |"
            )
        lines.append("")
    return "\n".join(lines)
