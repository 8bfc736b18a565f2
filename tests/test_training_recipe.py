"""The fast training recipe: its schedule, validation cadence, warm refit, thread and padding
handling, each against an answer known in advance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tailor.models import hardware
from tailor.models.sequential import SeqRecommender, fit_recipe, learning_rate_shape
from tailor.settings import PRESETS, TrainSettings


def _task(rng, n_items=20, n_users=30, length=12):
    starts = rng.integers(0, n_items, n_users)
    histories = [(s + np.arange(length)) % n_items for s in starts]
    text = rng.normal(size=(n_items, 8)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return histories, text


def test_one_cycle_warms_up_linearly_then_anneals_to_zero():
    shape = learning_rate_shape("one-cycle", warmup=0.1, total_steps=100)
    assert shape(0) == pytest.approx(0.1)  # first of ten warm-up steps
    assert shape(9) == pytest.approx(1.0)  # the peak ends the warm-up
    assert shape(10) == pytest.approx(1.0)
    assert shape(55) == pytest.approx(0.5)  # half-way down the cosine
    assert shape(100) == pytest.approx(0.0)
    values = [shape(s) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert {learning_rate_shape("constant", 0.1, 100)(s) for s in range(100)} == {1.0}


def test_the_optimiser_follows_the_schedule(rng):
    histories, text = _task(rng)
    settings = TrainSettings(epochs=4, dim=8, layers=1, max_len=6, batch_size=4)
    model = SeqRecommender(text, settings, seed=0)
    seen: list[float] = []
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    torch.optim.AdamW.step = step  # type: ignore[method-assign]
    try:
        model.fit(histories, seed=0)
    finally:
        torch.optim.AdamW.step = real_step  # type: ignore[method-assign]
    peak = settings.learning_rate
    assert max(seen) == pytest.approx(peak)
    assert seen[0] < peak / 2 and seen[-1] < peak / 10
    assert seen.index(max(seen)) < len(seen) // 4


def test_validation_runs_every_few_epochs_and_after_the_last(rng):
    histories, text = _task(rng)
    calls: list[int] = []
    settings = TrainSettings(epochs=5, valid_every=2, dim=8, layers=1, max_len=6, keep="best")
    model = SeqRecommender(text, settings, seed=0)

    def valid_fn(m):
        calls.append(1)
        return [0.1, 0.3, 0.2][len(calls) - 1]

    report = model.fit(histories, seed=0, valid_fn=valid_fn)
    assert len(calls) == 3  # epochs 2, 4 and 5
    assert report.best_epoch == 4 and report.valid_scores == [0.1, 0.3, 0.2]
    assert report.valid_epochs == [2, 4, 5]


def test_the_last_epoch_is_kept_unless_the_best_is_asked_for(rng):
    histories, text = _task(rng)
    settings = TrainSettings(epochs=3, dim=8, layers=1, max_len=6, valid_every=1, keep="last")
    scores = iter([0.1, 0.9, 0.2])
    last = SeqRecommender(text, settings, seed=0)
    report = last.fit(histories, seed=0, valid_fn=lambda m: next(scores))
    plain = SeqRecommender(text, settings, seed=0)
    plain.fit(histories, seed=0)
    assert report.best_epoch == 3
    # The validation pass reads but never moves the weights: with or without it, the same model.
    np.testing.assert_array_equal(last.score(histories[:3]), plain.score(histories[:3]))
    best = SeqRecommender(text, settings.model_copy(update={"keep": "best"}), seed=0)
    scores = iter([0.1, 0.9, 0.2])
    assert best.fit(histories, seed=0, valid_fn=lambda m: next(scores)).best_epoch == 2


def test_warm_refit_starts_from_the_early_stopped_weights(rng):
    histories, text = _task(rng)
    settings = TrainSettings(
        epochs=3,
        dim=8,
        layers=1,
        max_len=6,
        refit_epochs=1,
        learning_rate=1e-9,
        refit_learning_rate=1e-9,
        ensemble=False,
    )
    fitted = fit_recipe(text, settings, 0, histories, None, histories, None, lambda m: 0.0)
    first = fitted.valid_model.net.state_dict()
    again = fitted.evaluated.net.state_dict()
    # At a vanishing learning rate the refit cannot move: equal weights prove the warm start.
    for key in ("adapter.0.weight", "position.weight", "norm.weight"):
        torch.testing.assert_close(first[key], again[key], atol=1e-6, rtol=0)
    from_scratch = settings.model_copy(update={"refit_epochs": None, "learning_rate": 1e-2})
    cold = fit_recipe(text, from_scratch, 0, histories, None, histories[:10], None, lambda m: 0.0)
    weights = cold.valid_model.net.state_dict()["adapter.0.weight"]
    assert not torch.allclose(weights, cold.evaluated.net.state_dict()["adapter.0.weight"])


@pytest.mark.parametrize("windows", ["every", "newest"])
def test_a_warm_refit_trains_on_the_windows_refit_windows_names(rng, windows):
    histories, text = _task(rng, length=20)  # 20 events, max_len 6: 4 windows a user
    settings = TrainSettings(
        epochs=2, dim=8, layers=1, max_len=6, refit_epochs=3, refit_windows=windows, threads=1
    )
    fitted = fit_recipe(text, settings, 0, histories, None, histories, None, lambda m: 0.0)
    assert fitted.report.windows == 2 * 30 * 4  # the first fit: every window
    refit_pass = {"every": 30 * 4, "newest": 30}[windows]
    assert fitted.windows == fitted.report.windows + 3 * refit_pass


def test_padding_columns_cut_from_a_batch_change_no_hidden_state(rng):
    _, text = _task(rng)
    model = SeqRecommender(text, TrainSettings(dim=8, layers=2, max_len=10, dropout=0.0))
    model.net.eval()
    short = torch.tensor([[-1, 3, 4, 5], [-1, -1, 7, 8]])
    padded = torch.cat([torch.full((2, 6), -1), short], dim=1)
    with torch.no_grad():
        a = model.net.encode(short)
        b = model.net.encode(padded)[:, -4:]
    real = short >= 0
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


def test_threads_auto_uses_the_free_cores(rng, monkeypatch):
    histories, text = _task(rng)
    previous = torch.get_num_threads()
    monkeypatch.setattr(hardware, "_cpu_times", iter([(0, 0), (150, 200)]).__next__)
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(hardware, "usable_cores", lambda: 4)
    monkeypatch.setattr(hardware.time, "sleep", lambda s: None)
    try:
        SeqRecommender(text, TrainSettings(epochs=1, dim=8, layers=1, max_len=6)).fit(
            histories, seed=0
        )
        assert torch.get_num_threads() == 1  # three quarters busy of four cores: one free
    finally:
        torch.set_num_threads(previous)


def test_free_cores_is_within_the_usable_ones():
    assert 1 <= hardware.free_cores(0.05) <= hardware.usable_cores()


def test_emulated_bf16_is_never_chosen_on_a_cpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert hardware.native_bf16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert hardware.native_bf16("cpu") is True
    # Native or not, a CPU trains in fp32 under `auto` (autocast measured slower there).
    assert hardware.autocast_bf16("cpu") is False


def test_auto_precision_trains_a_cpu_model_in_fp32(rng, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    seen = []
    real = torch.autocast

    def spy(*args, **kwargs):
        seen.append(kwargs.get("enabled", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    histories, text = _task(rng)
    settings = TrainSettings(epochs=1, dim=16, layers=1, max_len=6, precision="auto")
    SeqRecommender(text, settings, seed=0).fit(histories, seed=0)
    assert seen and not any(seen)
    # The fit turns torch's NaN-filling of new tensors off for itself only.
    assert torch.utils.deterministic.fill_uninitialized_memory is True


def test_bf16_training_runs_and_learns(rng):
    histories, text = _task(rng)
    settings = TrainSettings(epochs=8, dim=16, layers=1, max_len=6, precision="bf16")
    report = SeqRecommender(text, settings, seed=0).fit(histories, seed=0)
    assert report.losses[-1] < report.losses[0]


def test_the_old_recipe_stays_reachable_as_a_preset():
    old = TrainSettings(**PRESETS["early-stopped"]["train"])
    assert (old.schedule, old.epochs, old.patience, old.refit_epochs) == ("constant", 40, 5, None)
    new = TrainSettings()
    assert new.schedule == "one-cycle" and new.epochs < old.epochs
