"""Training at scale: windows streamed to disk and read back in a block shuffle, and the
sampled softmax, each against the in-memory full-softmax fit it stands in for."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from tailor import columns as C
from tailor.models.sequential import SeqRecommender, make_training_windows
from tailor.models.windows import WindowFile, write_windows
from tailor.settings import TrainSettings


def events_file(path, histories, liked, ids):
    """Histories as the events file a split writes: one row per event, users together."""
    rows = [
        (f"u{u}", ids[item], bool(ok))
        for u, (hist, mask) in enumerate(zip(histories, liked, strict=True))
        for item, ok in zip(hist, mask, strict=True)
    ]
    users, items, positive = zip(*rows, strict=True)
    pl.DataFrame({C.USER_ID: users, C.ITEM_ID: items, C.POSITIVE: positive}).write_parquet(path)


def task(rng, n_items=40, n_users=60):
    """Users walking a cycle (i -> i + 1) with histories of varied length and some dislikes."""
    lengths = rng.integers(1, 30, n_users)
    starts = rng.integers(0, n_items, n_users)
    histories = [(s + np.arange(n)) % n_items for s, n in zip(starts, lengths, strict=True)]
    liked = [rng.random(len(h)) > 0.2 for h in histories]
    text = rng.normal(size=(n_items, 16)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    ids = [f"item-{i}" for i in range(n_items)]
    return histories, liked, text, ids


def test_streamed_windows_are_the_in_memory_windows(tmp_path, rng):
    histories, liked, _, ids = task(rng)
    events_file(tmp_path / "events.parquet", histories, liked, ids)
    # Batches of 7 rows: most users' events straddle two or more batches.
    written = write_windows(tmp_path / "events.parquet", ids, 6, tmp_path / "w", batch_rows=7)
    windows, ok = make_training_windows(histories, 6, liked)
    got, got_ok = WindowFile.open(tmp_path / "w").read(0, written.n)
    np.testing.assert_array_equal(got, windows)
    np.testing.assert_array_equal(got_ok, ok)
    positives = np.concatenate([h[m] for h, m in zip(histories, liked, strict=True)])
    np.testing.assert_array_equal(written.counts, np.bincount(positives, minlength=len(ids)))
    assert written.targets == int(ok[:, 1:].sum())
    assert (written.events, written.users) == (sum(map(len, histories)), len(histories))


def test_newest_only_keeps_each_users_newest_window_in_memory_and_on_file(tmp_path, rng):
    histories, liked, _, ids = task(rng)
    windows, ok = make_training_windows(histories, 6, liked, newest_only=True)
    users = [u for u, h in enumerate(histories) if len(h) >= 2]  # one event: no target
    assert len(windows) == len(users) < len(make_training_windows(histories, 6, liked)[0])
    for row, u in enumerate(users):
        newest = histories[u][-7:]
        np.testing.assert_array_equal(windows[row, 7 - len(newest) :], newest)
        assert (windows[row, : 7 - len(newest)] == -1).all()
        np.testing.assert_array_equal(ok[row, 7 - len(newest) :], liked[u][-7:])
    events_file(tmp_path / "events.parquet", histories, liked, ids)
    written = write_windows(
        tmp_path / "events.parquet", ids, 6, tmp_path / "w", batch_rows=7, newest_only=True
    )
    got, got_ok = WindowFile.open(tmp_path / "w").read(0, written.n)
    np.testing.assert_array_equal(got, windows)
    np.testing.assert_array_equal(got_ok, ok)
    # The counts (which items are trained, their logQ correction) still cover every event.
    positives = np.concatenate([h[m] for h, m in zip(histories, liked, strict=True)])
    np.testing.assert_array_equal(written.counts, np.bincount(positives, minlength=len(ids)))


def test_a_fit_on_the_newest_windows_steps_through_them_alone(rng):
    histories, liked, text, _ = task(rng)
    settings = TrainSettings(epochs=2, dim=16, layers=1, max_len=6, batch_size=8, threads=1)
    model = SeqRecommender(text, settings, seed=0)
    report = model.fit(histories, seed=0, liked=liked, newest_only=True)
    users = sum(len(h) >= 2 for h in histories)
    assert report.steps == 2 * -(-users // 8)
    positives = np.concatenate([h[m] for h, m in zip(histories, liked, strict=True)])
    trained = np.bincount(positives, minlength=len(text)) > 0
    np.testing.assert_array_equal(model.net.trained.numpy(), trained)


def test_a_file_whose_users_are_not_together_is_refused(tmp_path):
    pl.DataFrame(
        {C.USER_ID: ["a", "b", "a"], C.ITEM_ID: ["x", "y", "x"], C.POSITIVE: [True] * 3}
    ).write_parquet(tmp_path / "e.parquet")
    with pytest.raises(ValueError, match=r"e\.parquet.*user 'a'.*not together"):
        write_windows(tmp_path / "e.parquet", ["x", "y"], 4, tmp_path / "w", batch_rows=2)


def test_an_unknown_item_is_refused_naming_the_column(tmp_path):
    pl.DataFrame(
        {C.USER_ID: ["a", "a"], C.ITEM_ID: ["x", "zz"], C.POSITIVE: [True, True]}
    ).write_parquet(tmp_path / "e.parquet")
    with pytest.raises(ValueError, match=r"e\.parquet: item 'zz' in column 'item_id'"):
        write_windows(tmp_path / "e.parquet", ["x"], 4, tmp_path / "w")


def test_the_block_shuffle_yields_every_window_once_in_full_batches(tmp_path, rng):
    histories, liked, _, ids = task(rng, n_users=200)
    events_file(tmp_path / "events.parquet", histories, liked, ids)
    w = write_windows(tmp_path / "events.parquet", ids, 6, tmp_path / "w")
    windows, ok = make_training_windows(histories, 6, liked)
    targets = np.where(ok[:, 1:], windows[:, 1:], -1)

    def epoch(seed):
        return list(w.batches(np.random.default_rng(seed), 16, block=10, buffer_blocks=3))

    batches = epoch(5)
    assert all(len(x) == 16 for x, _ in batches[:-1]) and len(batches) == -(-w.n // 16)
    seen = np.concatenate([np.concatenate([x, y], axis=1) for x, y in batches])
    expected = np.concatenate([windows[:, :-1], targets], axis=1)
    # Every window exactly once: the same multiset of rows.
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, expected.tolist()))
    again = epoch(5)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert not np.array_equal(np.concatenate([x for x, _ in epoch(6)]), seen[:, :6])


def test_a_fit_from_the_window_file_is_the_in_memory_fit(tmp_path, rng):
    histories, liked, text, ids = task(rng)
    events_file(tmp_path / "events.parquet", histories, liked, ids)
    # One thread for both: `threads = auto` follows the load, and the sums' order with it.
    settings = TrainSettings(epochs=2, dim=16, layers=1, max_len=6, text_view_weight=0.3, threads=1)
    windows = write_windows(tmp_path / "events.parquet", ids, 6, tmp_path / "w", batch_rows=9)
    a, b = SeqRecommender(text, settings, seed=1), SeqRecommender(text, settings, seed=1)
    ra = a.fit(histories, seed=1, liked=liked)
    rb = b.fit_windows(windows, seed=1, block=windows.n)  # one buffer holds every window
    assert ra.losses == rb.losses
    np.testing.assert_array_equal(a.item_vectors(), b.item_vectors())
    np.testing.assert_array_equal(a.score(histories[:4]), b.score(histories[:4]))
    with pytest.raises(ValueError, match=r"train\.max_len"):
        SeqRecommender(text, settings.model_copy(update={"max_len": 5})).fit_windows(windows, 0)


def test_a_fit_read_in_small_shuffled_blocks_learns_the_task(tmp_path, rng):
    histories, liked, text, ids = task(rng, n_users=150)
    liked = [np.ones(len(h), dtype=bool) for h in histories]
    events_file(tmp_path / "events.parquet", histories, liked, ids)
    settings = TrainSettings(epochs=15, dim=32, layers=1, max_len=6, learning_rate=5e-3)
    windows = write_windows(tmp_path / "events.parquet", ids, 6, tmp_path / "w")
    model = SeqRecommender(text, settings, seed=0)
    report = model.fit_windows(windows, seed=0, block=8, buffer_blocks=2)
    assert report.losses[-1] < report.losses[0] * 0.5
    long = [h for h in histories if len(h) >= 4]
    top = model.score([h[:-1] for h in long]).argmax(axis=1)
    assert np.mean(top == np.array([h[-1] for h in long])) > 0.8  # the next step of the cycle


def one_batch(settings, text, histories, liked):
    """A model and every window as one batch: (model, x, y, valid, logit bias, trained)."""
    model = SeqRecommender(text, settings, seed=0)
    windows, ok = make_training_windows(histories, settings.max_len, liked)
    x = torch.as_tensor(windows[:, :-1])
    y = torch.as_tensor(np.where(ok[:, 1:], windows[:, 1:], -1))
    valid = (y >= 0) & (x >= 0)
    positives = np.concatenate([h[m] for h, m in zip(histories, liked, strict=True)])
    counts = np.bincount(positives, minlength=len(text))
    bias = torch.as_tensor(np.where(counts > 0, -0.5 * np.log1p(counts), -np.inf))
    bias = bias.float()
    trained = torch.as_tensor(np.flatnonzero(counts > 0))
    model.net.train(False)  # no dropout: every loss sees the same network
    return model, x, y, valid, bias, trained


def one_step_losses(settings, text, histories, liked):
    """The first step's loss with a full softmax and with every trained item sampled."""
    model, x, y, valid, bias, trained = one_batch(settings, text, histories, liked)
    full = model._step_loss(x, y[valid], valid, bias)
    sampled = model._step_loss(x, y[valid], valid, bias, sampler=lambda: trained)
    return float(full.detach()), float(sampled.detach())


def exact_settings(text_view_weight: float) -> TrainSettings:
    """A small model whose full softmax runs in fp32: two ways to the same sums agree to
    float precision (bf16 products would round each way differently)."""
    return TrainSettings(
        dim=16,
        layers=1,
        max_len=6,
        text_view_weight=text_view_weight,
        id_gate=2.0,
        catalogue_precision="fp32",
    )


@pytest.mark.parametrize("text_view_weight", [0.0, 0.4])
def test_sampling_every_trained_item_is_the_full_softmax(rng, text_view_weight):
    histories, liked, text, _ = task(rng)
    liked[0][:] = False  # some items are never positive: -inf in both losses
    settings = exact_settings(text_view_weight)
    settings = settings.model_copy(update={"in_batch_negatives": False})
    full, sampled = one_step_losses(settings, text, histories, liked)
    assert np.isfinite(full) and full == pytest.approx(sampled, rel=1e-5)


@pytest.mark.parametrize("text_view_weight", [0.0, 0.4])
def test_the_softmax_over_trained_columns_is_the_whole_catalogue_softmax(rng, text_view_weight):
    histories, liked, text, _ = task(rng)
    for hist, mask in zip(histories, liked, strict=True):
        mask[hist % 5 == 0] = False  # every fifth item is never a target: a -inf column
    settings = exact_settings(text_view_weight)
    model, x, y, valid, bias, trained = one_batch(settings, text, histories, liked)
    assert len(trained) == len(text) - len(text) // 5
    grads = []
    for columns in (None, trained):
        model.net.zero_grad()
        loss = model._step_loss(x, y[valid], valid, bias, columns=columns)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.net.parameters()]))
    (whole, whole_grads), (cut, cut_grads) = grads
    assert np.isfinite(whole) and cut == pytest.approx(whole, rel=1e-6)
    for a, b in zip(whole_grads, cut_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_the_text_view_loss_on_a_share_of_the_targets_estimates_the_whole(rng):
    histories, liked, text, _ = task(rng)
    settings = TrainSettings(dim=16, layers=1, max_len=6, text_view_weight=1.0)
    model, x, y, valid, bias, _ = one_batch(settings, text, histories, liked)
    whole = model._step_loss(x, y[valid], valid, bias).item()
    assert model._text_view_rows(10) is None
    half = settings.model_copy(update={"text_view_share": 0.5})
    model.settings = half
    rows = model._text_view_rows(10)
    assert len(rows) == 5 and len(set(rows.tolist())) == 5 and int(rows.max()) < 10
    torch.manual_seed(0)
    draws = [model._step_loss(x, y[valid], valid, bias).item() for _ in range(200)]
    assert len(set(draws)) > 100  # each step draws its own share
    assert np.mean(draws) == pytest.approx(whole, rel=0.01)


def test_softmax_auto_samples_only_above_the_catalogue_threshold(rng):
    _, _, text, _ = task(rng)
    counts = np.ones(len(text), dtype=np.int64)
    counts[:5] = 0
    small = SeqRecommender(text, TrainSettings(dim=16, layers=1))
    assert small._negative_sampler(counts) is None
    big = SeqRecommender(text, TrainSettings(dim=16, layers=1, full_softmax_items=10, negatives=7))
    draw = big._negative_sampler(counts)()
    assert len(draw) == 7 and set(draw.tolist()) <= set(range(5, len(text)))
    every = SeqRecommender(text, TrainSettings(dim=16, layers=1, softmax="sampled", negatives=99))
    assert sorted(every._negative_sampler(counts)().tolist()) == list(range(5, len(text)))


@pytest.mark.parametrize("in_batch", [False, True])
def test_a_sampled_softmax_learns_the_task(rng, in_batch):
    histories, _, text, _ = task(rng, n_items=200, n_users=300)
    histories = [h for h in histories if len(h) >= 4]
    settings = TrainSettings(
        epochs=15,
        dim=32,
        layers=1,
        max_len=6,
        learning_rate=5e-3,
        softmax="sampled",
        negatives=20,
        in_batch_negatives=in_batch,
    )
    model = SeqRecommender(text, settings, seed=0)
    report = model.fit([h[:-1] for h in histories], seed=0)
    assert report.losses[-1] < report.losses[0] * 0.5
    top = model.score([h[:-1] for h in histories]).argmax(axis=1)
    assert np.mean(top == np.array([h[-1] for h in histories])) > 0.8
