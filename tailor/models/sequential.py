"""The fine-tuned recommender: a causal transformer over item vectors made from text.

An item's vector is adapter(frozen language-model vector) + a learned id embedding. The text
part means a new or rarely seen item already lands near the items it reads like; the id part
lets interactions move well-known items where the data puts them. A user is the last hidden
state of the transformer over their recent history (SASRec-style), trained with a full softmax
over the catalogue at every position (cheap for catalogues up to ~100k items on a CPU), or
above that (`train.softmax`) with a sampled one: each target against shared uniform negatives,
touching only the vectors a step needs, the id table updated sparsely. Windows come from memory
(`fit`) or from a window file on disk (`fit_windows`, `tailor.models.windows`).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tailor.models.encoder import pick_device
from tailor.models.hardware import autocast_bf16, free_cores, native_bf16
from tailor.models.softmax import catalogue_cross_entropy
from tailor.models.windows import WindowFile, cut_windows, pad_windows
from tailor.settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    n_items: int
    text_dim: int
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    id_embedding: bool = True
    text_view: bool = False
    text: bool = True  # False: ids only, a plain SASRec (the id-only baseline)
    id_gate: float = 0.0  # > 0: an item's id part weighs n / (n + id_gate), n its positives
    sequence: str = "transformer"  # or "gru" (GRU4Rec-style)

    @classmethod
    def from_settings(cls, n_items: int, text_dim: int, s: TrainSettings) -> ModelConfig:
        return cls(
            n_items=n_items,
            text_dim=text_dim,
            dim=s.dim,
            layers=s.layers,
            heads=s.heads,
            max_len=s.max_len,
            dropout=s.dropout,
            id_embedding=s.id_embedding,
            text_view=s.text_view_weight > 0 and s.id_embedding and s.text,
            text=s.text,
            id_gate=s.id_gate if s.text else 0.0,
            sequence=s.sequence,
        )


class SeqRecNet(nn.Module):
    def __init__(self, cfg: ModelConfig, text_vectors: np.ndarray) -> None:
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError(
                f"train.dim ({cfg.dim}) must be divisible by train.heads ({cfg.heads})"
            )
        self.cfg = cfg
        self.register_buffer("text", torch.as_tensor(text_vectors, dtype=torch.float32))
        self.adapter = None
        if cfg.text:
            self.adapter = nn.Sequential(
                nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim)
            )
        self.item_id = nn.Embedding(cfg.n_items, cfg.dim) if cfg.id_embedding else None
        if self.item_id is not None and cfg.text:
            # Zero-initialised: training starts from the text geometry and adds id detail
            # only where interactions support it.
            nn.init.zeros_(self.item_id.weight)
        elif self.item_id is not None:
            # Ids only (SASRec): random, as there is no geometry to start from.
            nn.init.normal_(self.item_id.weight, std=0.02)
        self.position = nn.Embedding(cfg.max_len, cfg.dim)
        nn.init.normal_(self.position.weight, std=0.02)
        if cfg.sequence == "gru":
            # GRU4Rec: order comes from the recurrence (no positions are added in `encode`).
            self.blocks = nn.GRU(
                cfg.dim,
                cfg.dim,
                cfg.layers,
                batch_first=True,
                dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            )
        else:
            layer = nn.TransformerEncoderLayer(
                cfg.dim,
                cfg.heads,
                dim_feedforward=2 * cfg.dim,
                dropout=cfg.dropout,
                batch_first=True,
                norm_first=True,
            )
            self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.input_drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.dim)
        # Which items had training events; the others are scored by the text view alone.
        self.register_buffer("trained", torch.ones(cfg.n_items, dtype=torch.bool))
        # How much each item's id part counts (the id gate); 1 without one.
        self.register_buffer("id_scale", torch.ones(cfg.n_items, dtype=torch.float32))

    def text_matrix(self) -> torch.Tensor:
        """The text view: adapter(frozen text vector) per item (zeros for an ids-only model)."""
        if self.adapter is None:
            return torch.zeros(self.cfg.n_items, self.cfg.dim, device=self.text.device)
        return self.adapter(self.text)

    def item_matrix(
        self, keep_id: torch.Tensor | None = None, text_part: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Item vectors; `keep_id` (bool per item) drops the id part where False."""
        items = self.text_matrix() if text_part is None else text_part
        if self.item_id is not None:
            ids = self.item_id.weight
            if self.cfg.id_gate > 0:
                ids = ids * self.id_scale.unsqueeze(1)
            if keep_id is not None:
                ids = ids * keep_id.unsqueeze(1)
            items = items + ids
        return items

    def item_rows(
        self, ids: torch.Tensor, keep_id: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(text view, item vectors) of the items at `ids` only: `item_matrix` row by row,
        for a step that needs a few thousand items of a large catalogue."""
        if self.adapter is None:
            text = torch.zeros(len(ids), self.cfg.dim, device=self.text.device)
        else:
            text = self.adapter(self.text[ids])
        items = text
        if self.item_id is not None:
            rows = self.item_id(ids)
            if self.cfg.id_gate > 0:
                rows = rows * self.id_scale[ids].unsqueeze(1)
            if keep_id is not None:
                rows = rows * keep_id.unsqueeze(1)
            items = text + rows
        return text, items

    def encode(self, seqs: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, L, dim) for left-padded sequences (padding = -1)."""
        x, pad = self._inputs(seqs, items)
        if self.cfg.sequence == "gru":
            h, _ = self.blocks(x)
            return self.norm(h)
        return self.norm(self.blocks(x, mask=self._attention_mask(pad)))

    def encode_last(self, seqs: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """The last position's hidden state (B, dim): `encode(...)[:, -1]`, what a user's
        vector is. The last block computes only that position's query: half the blocks'
        work at two blocks, and a user's vector is most of what validation, evaluation,
        cold start and the refresh compute."""
        if self.cfg.sequence == "gru":
            return self.encode(seqs, items)[:, -1]
        x, pad = self._inputs(seqs, items)
        *first, last = self.blocks.layers
        if first:
            mask = self._attention_mask(pad)
            for layer in first:
                x = layer(x, src_mask=mask)
        # `encode`'s mask for the last row: every padded key blocked but the position itself.
        keys_blocked = pad.clone()
        keys_blocked[:, -1] = False
        y = last.norm1(x)  # the blocks are pre-norm (norm_first)
        attended = last.self_attn(
            y[:, -1:], y, y, key_padding_mask=keys_blocked, need_weights=False
        )[0]
        h = x[:, -1:] + last.dropout1(attended)
        h = h + last._ff_block(last.norm2(h))
        return self.norm(h[:, 0])

    def _inputs(
        self, seqs: torch.Tensor, items: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks' input for left-padded sequences, and where the padding is."""
        if items is None:
            items = self.item_matrix()
        pad = seqs < 0
        x = items[seqs.clamp(min=0)] * (~pad).unsqueeze(-1)
        if self.cfg.sequence != "gru":
            # A GRU gets its order from the recurrence; left padding is zeros read before
            # the first event, the same start state for every user, so no packing is needed.
            x = x + self.position.weight[-seqs.shape[1] :]
        return self.input_drop(x), pad

    def _attention_mask(self, pad: torch.Tensor) -> torch.Tensor:
        """Causal attention with padded keys blocked, one (L, L) mask per sequence and head."""
        length = pad.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=pad.device).triu(1)
        # Block padded keys, but let every position see itself so no row is fully masked
        # (a fully masked row gives NaN); padded positions' outputs are never used.
        blocked = causal.unsqueeze(0) | pad.unsqueeze(1)
        eye = torch.eye(length, dtype=torch.bool, device=pad.device).unsqueeze(0)
        blocked = blocked & ~eye
        return blocked.repeat_interleave(self.cfg.heads, dim=0)


class _EncodeLast(nn.Module):
    """`SeqRecNet.encode_last` as a module's forward, what `_trace_single` traces. One class
    for every model: TorchScript keeps each traced class for the life of the process."""

    def __init__(self, net: SeqRecNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, seqs: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.net.encode_last(seqs, items)


def left_pad(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    out = np.full((len(histories), max_len), -1, dtype=np.int64)
    for row, hist in enumerate(histories):
        tail = np.asarray(hist, dtype=np.int64)[-max_len:]
        if len(tail):
            out[row, -len(tail) :] = tail
    return out


def make_training_windows(
    histories: Sequence[np.ndarray],
    max_len: int,
    liked: Sequence[np.ndarray] | None = None,
    newest_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut every history into windows of max_len + 1 events, from the newest backwards.

    Windows overlap by one event, so every event but a user's first is a target exactly once.
    Returns the windows (left-padded with -1) and, aligned with them, whether each event may
    be a target: a positive (`liked`; every event without it). `newest_only` keeps each
    user's newest window alone.
    """
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for row, hist in enumerate(histories):
        hist = np.asarray(hist, dtype=np.int64)
        ok = np.ones(len(hist), dtype=bool) if liked is None else np.asarray(liked[row], bool)
        rows.extend(cut_windows(hist, ok, max_len, newest_only))
    return pad_windows(rows, max_len + 1)


def learning_rate_shape(schedule: str, warmup: float, total_steps: int) -> Callable[[int], float]:
    """The learning rate's multiplier at each step: 1 throughout (`constant`), or a linear
    warm-up over the first `warmup` share of the steps and a cosine down to 0 at the last
    (`one-cycle`: large early steps find the basin fast, small late ones settle in it, so the
    best epoch is the last one of a short budget)."""
    if schedule == "constant":
        return lambda step: 1.0
    warm = max(1, round(warmup * total_steps))

    def shape(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return shape


@contextmanager
def _deterministic_kernels() -> Iterator[None]:
    """torch's deterministic kernels for a fit, without its NaN-filling of new tensors.

    Multithreaded scatter-adds (the backward of the item gather) sum in a varying order;
    deterministic kernels make two runs with one seed give identical metrics. Deterministic
    mode also fills every new tensor with NaN to expose reads of uninitialised memory (a
    debugging aid): some 300 fills a step, 4 % of an epoch here. No kernel the fit uses reads
    memory it did not write, so results are the same without it.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(previous)


class _MemoryWindows:
    """Windows cut in memory from histories; an epoch is one permutation of them."""

    def __init__(
        self,
        histories: Sequence[np.ndarray],
        max_len: int,
        liked: Sequence[np.ndarray] | None,
        n_items: int,
        newest_only: bool = False,
    ) -> None:
        windows, target_ok = make_training_windows(histories, max_len, liked, newest_only)
        self.n = len(windows)
        self.targets = int(target_ok[:, 1:].sum())
        self.inputs = torch.as_tensor(windows[:, :-1])
        self.targets_ = torch.as_tensor(np.where(target_ok[:, 1:], windows[:, 1:], -1))
        events = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories] or [[]])
        events = events.astype(np.int64)
        if liked is not None and len(events):
            events = events[np.concatenate([np.asarray(m, dtype=bool) for m in liked])]
        self.counts = np.bincount(events, minlength=n_items)

    def batches(
        self, rng: np.random.Generator, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(rng.permutation(self.n))
        for start in range(0, self.n, batch_size):
            batch = order[start : start + batch_size]
            yield self.inputs[batch], self.targets_[batch]


class _FileWindows:
    """Windows read from a window file in a seeded block shuffle."""

    def __init__(self, windows: WindowFile, block: int, buffer_blocks: int) -> None:
        self.windows, self.block, self.buffer_blocks = windows, block, buffer_blocks
        self.n, self.targets, self.counts = windows.n, windows.targets, windows.counts

    def batches(
        self, rng: np.random.Generator, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.windows.batches(rng, batch_size, self.block, self.buffer_blocks):
            yield torch.as_tensor(x), torch.as_tensor(y)


@dataclass
class FitReport:
    losses: list[float]  # mean training loss per epoch
    valid_scores: list[float]  # the validation callback's value per validated epoch
    best_epoch: int  # 1-based epoch whose weights were kept
    seconds: float
    valid_epochs: list[int] = field(default_factory=list)  # the epochs of `valid_scores`
    # torch threads the fit ran on: sums reduce in another order on another count, so runs
    # agree to the last digit only at the same count (`train.threads = auto` follows the load).
    threads: int = 0
    steps: int = 0  # optimiser steps taken
    windows: int = 0  # windows trained on, summed over epochs (an epoch's worth = every window)


class SeqRecommender:
    """Fits and scores; satisfies `tailor.models.base.Recommender`."""

    name = "tailor-seq"

    def __init__(
        self, text_vectors: np.ndarray, settings: TrainSettings | None = None, seed: int = 0
    ) -> None:
        self.settings = settings or TrainSettings()
        self.text_vectors = np.asarray(text_vectors, dtype=np.float32)
        self.n_items = len(self.text_vectors)
        self.config = ModelConfig.from_settings(
            self.n_items, self.text_vectors.shape[1], self.settings
        )
        self.device = pick_device(self.settings.device)
        # Initial weights come from the seed too, without touching the caller's RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = SeqRecNet(self.config, self.text_vectors).to(self.device)
        precision = self.settings.catalogue_precision
        self._catalogue_bf16 = precision == "bf16" or (
            precision == "auto" and native_bf16(self.device)
        )
        # (text view, item matrix) cached for serving by `freeze`; None while weights may move.
        self._frozen: tuple[torch.Tensor, torch.Tensor] | None = None
        # Rows of the frozen matrices for trained items (the text view's normalisers).
        self._frozen_trained: tuple[torch.Tensor, torch.Tensor] | None = None
        self._single = None  # the encoder traced for one user, made by `freeze`
        # (each item's share of training targets, trained items): set with the sampled
        # softmax's sampler, read by its logQ correction.
        self._target_share: tuple[torch.Tensor, int] | None = None

    def fit(
        self,
        histories: Sequence[np.ndarray],
        seed: int,
        valid_fn: Callable[[SeqRecommender], float] | None = None,
        progress: bool = False,
        liked: Sequence[np.ndarray] | None = None,
        max_steps: int | None = None,
        newest_only: bool = False,
    ) -> FitReport:
        """Train on histories (item positions in time order).

        Every event is input; only the positives (`liked`, one bool per event; every event
        without it) are prediction targets. With `valid_fn` (higher is better) the weights of
        the best epoch are kept. `max_steps` ends the fit early (a benchmark's budget).
        `newest_only` trains on each user's newest window alone (a warm continuation: see
        `train.refit_windows`); the item counts, which items are trained and their logQ
        correction, still come from every event.
        """
        source = _MemoryWindows(histories, self.settings.max_len, liked, self.n_items, newest_only)
        with _deterministic_kernels():
            return self._fit(source, seed, valid_fn, progress, max_steps)

    def fit_windows(
        self,
        windows: WindowFile,
        seed: int,
        valid_fn: Callable[[SeqRecommender], float] | None = None,
        progress: bool = False,
        block: int = 65_536,
        buffer_blocks: int = 4,
        max_steps: int | None = None,
    ) -> FitReport:
        """Train on windows on disk (`tailor.models.windows.write_windows`): memory holds
        `buffer_blocks` blocks of `block` windows, whatever the number of events. The result
        is `fit`'s on the same histories when one buffer holds every window. `max_steps` ends
        the fit early (a benchmark's or a smoke run's budget)."""
        if windows.width != self.settings.max_len + 1:
            raise ValueError(
                f"{windows.folder}: windows of {windows.width - 1} events, the model reads "
                f"{self.settings.max_len} (train.max_len)"
            )
        if len(windows.counts) != self.n_items:
            raise ValueError(
                f"{windows.folder}: windows over {len(windows.counts)} items, the model has "
                f"{self.n_items}"
            )
        source = _FileWindows(windows, block, buffer_blocks)
        with _deterministic_kernels():
            return self._fit(source, seed, valid_fn, progress, max_steps)

    def _fit(
        self,
        source: _MemoryWindows | _FileWindows,
        seed: int,
        valid_fn: Callable[[SeqRecommender], float] | None,
        progress: bool,
        max_steps: int | None = None,
    ) -> FitReport:
        started = time.perf_counter()
        s = self.settings
        threads = free_cores() if s.threads == "auto" else s.threads
        if threads is not None:
            torch.set_num_threads(threads)
        bf16 = s.precision == "bf16" or (s.precision == "auto" and autocast_bf16(self.device))
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        if source.n == 0 or not source.targets:
            raise ValueError("no user has a positive training event after another event")
        counts = source.counts
        # Items that are never a training target are not in the catalogue yet as far as
        # training knows (new items): keeping them out of the softmax leaves their id embedding
        # at zero, so only their text places them, instead of learning "never chosen" as a fact.
        unseen = counts == 0
        self.net.trained.copy_(torch.as_tensor(~unseen))
        # One additive bias per item folds both into the logits in a single pass: -inf for
        # unseen items, and the logQ correction (a full softmax over-rewards items that are
        # frequent targets; taking their log frequency out leaves more room for the tail).
        bias = -s.popularity_correction * np.log1p(counts)
        bias[unseen] = -np.inf
        logit_bias = torch.as_tensor(bias, dtype=torch.float32, device=self.device)
        # The full softmax scores the trained items alone: an unseen item's share is
        # exp(-inf) = 0 whatever its logit, so its column is work for nothing (held-out cold
        # items were 11 % of MovieLens's catalogue).
        columns = None
        if unseen.any():
            columns = torch.as_tensor(np.flatnonzero(~unseen), device=self.device)
        if self.config.id_gate > 0:
            # Few events, little id: rare items lean on their text, frequent ones on their id.
            scale = counts / (counts + self.config.id_gate)
            self.net.id_scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        steps_per_epoch = math.ceil(source.n / s.batch_size)
        sampler = self._negative_sampler(counts)
        shape = learning_rate_shape(s.schedule, s.warmup, steps_per_epoch * s.epochs)
        optimisers = self._optimisers(sparse_ids=sampler is not None)
        schedules = [torch.optim.lr_scheduler.LambdaLR(o, shape) for o in optimisers]
        report = FitReport(losses=[], valid_scores=[], best_epoch=s.epochs, seconds=0.0)
        best_state: dict[str, torch.Tensor] | None = None
        best_score = -math.inf
        bar = tqdm(range(1, s.epochs + 1), desc="train", unit="epoch", disable=not progress)
        steps = windows = 0
        for epoch in bar:
            self.net.train()
            total = torch.zeros((), device=self.device)
            count = 0
            # Long epochs (millions of windows) get a bar of their own steps.
            step_bar = tqdm(
                source.batches(rng, s.batch_size),
                total=steps_per_epoch,
                desc=f"epoch {epoch}",
                unit="step",
                leave=False,
                disable=not progress or steps_per_epoch < 1_000,
            )
            for x, y in step_bar:
                if max_steps is not None and steps >= max_steps:
                    break
                steps += 1
                windows += len(x)
                # Windows are left-padded: columns that are padding in every row of the batch
                # cost attention and feed-forward time for nothing, so they are cut.
                first = int((x >= 0).any(0).int().argmax())
                x, y = x[:, first:].to(self.device), y[:, first:].to(self.device)
                valid = (y >= 0) & (x >= 0)
                with torch.autocast(self.device.split(":")[0], torch.bfloat16, enabled=bf16):
                    loss = self._step_loss(x, y[valid], valid, logit_bias, sampler, columns)
                for opt in optimisers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt, schedule in zip(optimisers, schedules, strict=True):
                    opt.step()
                    schedule.step()
                n = int(valid.sum())
                total += loss.detach().float() * n
                count += n
            step_bar.close()
            report.losses.append(float(total) / max(count, 1))
            postfix = {"loss": f"{report.losses[-1]:.4f}"}
            validate = epoch % s.valid_every == 0 or epoch == s.epochs
            if valid_fn is not None and validate:
                score = float(valid_fn(self))
                report.valid_scores.append(score)
                report.valid_epochs.append(epoch)
                postfix["valid"] = f"{score:.4f}"
                best_score = max(best_score, score)
                # The latest epoch within the tolerance of the best is kept: validation cannot
                # tell such epochs apart, and a later one has learned more of the tail.
                if score >= best_score - s.keep_tolerance * abs(best_score):
                    report.best_epoch = epoch
                    if s.keep == "best":
                        best_state = {
                            k: v.detach().clone() for k, v in self.net.state_dict().items()
                        }
            bar.set_postfix(postfix)
            log.info("epoch %d loss %.4f %s", epoch, report.losses[-1], postfix.get("valid", ""))
            if max_steps is not None and steps >= max_steps:
                break
            if (
                valid_fn is not None
                and s.patience
                and validate
                and epoch - report.best_epoch >= s.patience
            ):
                log.info("no validation score near the best for %d epochs: stopping", s.patience)
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        elif s.keep == "last":
            report.best_epoch = len(report.losses)  # the weights kept are the last epoch's
        if not self.config.text_view and self.config.text:
            self.impute_untrained_ids(counts > 0)
        if self.net.item_id is not None:
            self.net.item_id.sparse = False
        report.seconds = time.perf_counter() - started
        report.threads = torch.get_num_threads()
        report.steps = steps
        report.windows = windows
        return report

    def _optimisers(self, sparse_ids: bool) -> list[torch.optim.Optimizer]:
        """AdamW over every parameter (fused: one kernel for all their updates). With
        `sparse_ids` (the sampled softmax) the id table is left to a lazy SparseAdam: a step
        touches a few thousand of its rows, and a dense gradient and update of every row
        was 80 % of a step at 10^6 items (it has no weight decay, the only difference)."""
        s = self.settings
        ids = self.net.item_id
        if not sparse_ids or ids is None:
            params = list(self.net.parameters())
            return [
                torch.optim.AdamW(
                    params, lr=s.learning_rate, weight_decay=s.weight_decay, fused=True
                )
            ]
        ids.sparse = True
        rest = [p for p in self.net.parameters() if p is not ids.weight]
        return [
            torch.optim.AdamW(rest, lr=s.learning_rate, weight_decay=s.weight_decay, fused=True),
            torch.optim.SparseAdam([ids.weight], lr=s.learning_rate),
        ]

    def _negative_sampler(self, counts: np.ndarray) -> Callable[[], torch.Tensor] | None:
        """None for a full softmax; else a draw of `train.negatives` positions, uniform over
        the items with training targets (uniform, so every candidate's sampling correction is
        the same constant and cancels in the softmax)."""
        s = self.settings
        full = s.softmax == "full" or (s.softmax == "auto" and self.n_items <= s.full_softmax_items)
        if full:
            return None
        trained = torch.as_tensor(np.flatnonzero(counts > 0), device=self.device)
        share = torch.as_tensor(counts / max(counts.sum(), 1), dtype=torch.float32)
        self._target_share = (share.to(self.device), len(trained))
        if s.negatives >= len(trained):
            return lambda: trained  # every trained item: the full softmax, in candidates
        size = (s.negatives,)
        return lambda: trained[torch.randint(len(trained), size, device=self.device)]

    def _step_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        logit_bias: torch.Tensor,
        sampler: Callable[[], torch.Tensor] | None = None,
        columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The full-softmax loss of one batch: the full view and, with `text_view`, the text
        view alone (it is all a new item has), each a product with the whole catalogue, or
        with the items at `columns` (sorted positions, every target among them) alone.
        With a `sampler`, the sampled-softmax loss instead (`_sampled_step_loss`)."""
        if sampler is not None:
            return self._sampled_step_loss(x, y, valid, logit_bias, sampler())
        s = self.settings
        keep = None
        if s.id_dropout > 0:
            keep = torch.rand(self.n_items, device=self.device) >= s.id_dropout
        text_part = self.net.text_matrix()
        items = self.net.item_matrix(keep, text_part)
        h = self.net.encode(x, items)[valid]
        if columns is not None:
            items, text_part, logit_bias = items[columns], text_part[columns], logit_bias[columns]
            y = torch.searchsorted(columns, y)
        return self._softmax_losses(h, y, items, text_part, logit_bias)

    def _softmax_losses(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        items: torch.Tensor,
        text_part: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> torch.Tensor:
        # Each view its own product with the bias added inside it. One product over both
        # views, sliced or viewed in halves, took 2.6-2.8 s an epoch here against 2.1 s.
        # Under bf16 autocast (`train.precision`) the products are bf16 whatever this says.
        low = self._catalogue_bf16 or torch.is_autocast_enabled(h.device.type)
        loss = catalogue_cross_entropy(h, items, logit_bias, y, low)
        if not self.config.text_view:
            return loss
        rows = self._text_view_rows(len(y))
        h, y = (h, y) if rows is None else (h[rows], y[rows])
        text_loss = catalogue_cross_entropy(h, text_part, logit_bias, y, low)
        return loss + self.settings.text_view_weight * text_loss

    def _text_view_rows(self, n: int) -> torch.Tensor | None:
        """The targets the text view's loss is computed on this step: a uniform draw of
        `train.text_view_share` of the `n` (None = all). The loss is a mean, so a uniform
        draw keeps its expected value and the gradient's."""
        share = self.settings.text_view_share
        if share >= 1.0:
            return None
        k = max(1, round(share * n))
        return torch.randperm(n, device=self.device)[:k]

    def _sampled_step_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        valid: torch.Tensor,
        logit_bias: torch.Tensor,
        negatives: torch.Tensor,
    ) -> torch.Tensor:
        """Each target against the batch's shared `negatives` (positions), computing vectors
        only for the items the batch reads or scores: a step costs the same for 10^4 or
        10^6 items. A negative that is the target itself is masked out (an accidental hit)."""
        s = self.settings
        bias_y, bias_neg = logit_bias[y], None
        if s.in_batch_negatives:
            # The batch's targets join the negatives: popular items, sampled about as often
            # as they are targets. Each candidate's logit is corrected by the log of its
            # expected count among the candidates (logQ), the positive's too.
            share, n_trained = self._target_share
            uniform = len(negatives) / n_trained
            negatives = torch.cat([negatives, y])
            bias_y = bias_y - torch.log(uniform + len(y) * share[y])
            bias_neg = logit_bias[negatives] - torch.log(uniform + len(y) * share[negatives])
        if bias_neg is None:
            bias_neg = logit_bias[negatives]
        seen = x >= 0
        uniq, inverse = torch.unique(torch.cat([x[seen], y, negatives]), return_inverse=True)
        n_x, n_y = int(seen.sum()), len(y)
        keep = None
        if s.id_dropout > 0:
            keep = torch.rand(len(uniq), device=self.device) >= s.id_dropout
        text_rows, item_rows = self.net.item_rows(uniq, keep)
        local_x = torch.full_like(x, -1)
        local_x[seen] = inverse[:n_x]
        local_y, local_neg = inverse[n_x : n_x + n_y], inverse[n_x + n_y :]
        h = self.net.encode(local_x, item_rows)[valid]
        minus_inf = torch.tensor(-torch.inf, device=h.device)

        def hits_of(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.nonzero(negatives.unsqueeze(0) == targets.unsqueeze(1), as_tuple=True)

        every_hit = hits_of(y)

        def loss_of(rows: torch.Tensor, pick: torch.Tensor | None = None) -> torch.Tensor:
            # Column 0 is the target, the rest the shared negatives with their bias added
            # inside the product; at thousands of negatives this matrix is the step's cost.
            # `pick`: the targets this loss is computed on (None = all).
            h_, y_, local_y_, bias_y_, hits = h, y, local_y, bias_y, every_hit
            if pick is not None:
                h_, y_, local_y_, bias_y_ = h[pick], y[pick], local_y[pick], bias_y[pick]
                hits = hits_of(y_)
            positive = (h_ * rows[local_y_]).sum(-1, keepdim=True) + bias_y_.unsqueeze(1)
            negative = torch.addmm(bias_neg, h_, rows[local_neg].T)
            # Accidental hits (a negative that is the target itself) leave the softmax: few,
            # so set one by one rather than masking the whole matrix.
            negative.index_put_(hits, minus_inf)
            logits = torch.cat([positive, negative], dim=1)
            return nn.functional.cross_entropy(logits, torch.zeros_like(y_))

        loss = loss_of(item_rows)
        if self.config.text_view:
            loss = loss + s.text_view_weight * loss_of(text_rows, self._text_view_rows(len(y)))
        return loss

    @torch.no_grad()
    def impute_untrained_ids(self, trained: np.ndarray) -> int:
        """Give items without training events the id embedding of their text neighbours.

        A new item's own id embedding never moved from zero; borrowing the similarity-weighted
        average of the `cold_id_neighbours` trained items whose text is closest puts it where
        items that read like it sit in the model's space. Returns how many items were filled.
        """
        k = self.settings.cold_id_neighbours
        cold = np.flatnonzero(~trained)
        warm = np.flatnonzero(trained)
        if self.net.item_id is None or k == 0 or len(cold) == 0 or len(warm) == 0:
            return 0
        k = min(k, len(warm))
        sims = self.text_vectors[cold] @ self.text_vectors[warm].T
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weights = np.clip(np.take_along_axis(sims, nearest, axis=1), 1e-6, None)
        weights = weights / weights.sum(axis=1, keepdims=True)
        ids = self.net.item_id.weight
        borrowed = np.einsum(
            "ck,ckd->cd", weights, ids[torch.as_tensor(warm[nearest])].cpu().numpy()
        )
        ids[torch.as_tensor(cold)] = torch.as_tensor(borrowed, dtype=ids.dtype, device=ids.device)
        return len(cold)

    @property
    def vector_dim(self) -> int:
        """Width of `user_vectors` and `item_vectors` (one more with the text view)."""
        return self.config.dim + int(self.config.text_view)

    def _matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._frozen is not None:
            return self._frozen
        text_part = self.net.text_matrix()
        return text_part, self.net.item_matrix(text_part=text_part)

    @torch.inference_mode()
    def freeze(self) -> None:
        """Compute the item matrices once and reuse them for every later call (serving).

        Recomputing the adapter over the whole catalogue costs milliseconds per request; a
        frozen model pays it once. Never freeze a model that is still being trained.
        """
        self.net.eval()
        self._frozen = None
        self._frozen = self._matrices()
        self._cache_trained()
        self._single = self._trace_single()

    def _trace_single(self):
        """The encoder traced for one user: a live request's shape. Tracing removes the
        per-module Python overhead (about a fifth of the pass at this size) and computes the
        same numbers; anything tracing cannot take simply stays eager."""
        example = torch.zeros((1, self.config.max_len), dtype=torch.long, device=self.device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about Python-side shapes
                return torch.jit.trace(
                    _EncodeLast(self.net).eval(), (example, self._frozen[1]), check_trace=False
                )
        except Exception:  # pragma: no cover - depends on the torch build
            log.debug("tracing the encoder failed; serving it eagerly", exc_info=True)
            return None

    def _cache_trained(self) -> None:
        trained = self.net.trained
        self._frozen_trained = (self._frozen[0][trained], self._frozen[1][trained])

    @torch.inference_mode()
    def add_items(self, text_vectors: np.ndarray) -> np.ndarray:
        """Append items known only by their text; returns their positions.

        They have no training events, so they get a zero id embedding and are scored by the
        text view, exactly like the cold items of the offline protocol.
        """
        new = torch.as_tensor(np.asarray(text_vectors, dtype=np.float32), device=self.device)
        if new.ndim != 2 or new.shape[1] != self.config.text_dim:
            raise ValueError(
                f"need (n, {self.config.text_dim}) text vectors, got {tuple(new.shape)}"
            )
        start, n = self.n_items, len(new)
        net = self.net
        net.text = torch.cat([net.text, new])
        net.trained = torch.cat([net.trained, torch.zeros(n, dtype=torch.bool, device=self.device)])
        net.id_scale = torch.cat([net.id_scale, torch.zeros(n, device=self.device)])
        if net.item_id is not None:
            zeros = torch.zeros(n, self.config.dim, device=self.device)
            # from_pretrained: no random initialisation of a matrix about to be overwritten.
            net.item_id = nn.Embedding.from_pretrained(torch.cat([net.item_id.weight, zeros]))
        self.text_vectors = np.concatenate([self.text_vectors, new.cpu().numpy()])
        self.n_items = start + n
        self.config = replace(self.config, n_items=self.n_items)
        if self._frozen is not None:
            text_part = net.adapter(new)
            self._frozen = (
                torch.cat([self._frozen[0], text_part]),
                torch.cat([self._frozen[1], text_part]),  # zero id part
            )
        return np.arange(start, start + n, dtype=np.int64)

    @torch.inference_mode()
    def update_item_texts(self, positions: np.ndarray, text_vectors: np.ndarray) -> None:
        """Give known items a new text (a changed title or description); ids are kept."""
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64), device=self.device)
        new = torch.as_tensor(np.asarray(text_vectors, dtype=np.float32), device=self.device)
        self.net.text[pos] = new
        self.text_vectors[np.asarray(positions)] = new.cpu().numpy()
        if self._frozen is not None:
            text_part = self.net.adapter(new)
            items = text_part
            if self.net.item_id is not None:
                items = text_part + self.net.item_id.weight[pos]
            self._frozen[0][pos] = text_part
            self._frozen[1][pos] = items
            self._cache_trained()

    @torch.inference_mode()
    def item_vectors(self, positions: np.ndarray | None = None) -> np.ndarray:
        """What the index holds; the user vector's inner product with it is the score.

        With the text view, an item without training events is its text-view vector plus a
        1 in an extra column; the user's extra column holds the difference of the two views'
        log-normalisers, so every score is a log-probability of the view that knows the item.
        """
        if self._frozen is None:
            self.net.eval()
        text_part, items = self._matrices()
        cold = ~self.net.trained
        if positions is not None:
            pos = torch.as_tensor(np.asarray(positions, dtype=np.int64), device=self.device)
            text_part, items, cold = text_part[pos], items[pos], cold[pos]
        if not self.config.text_view:
            return items.float().cpu().numpy()
        items = torch.where(cold.unsqueeze(1), text_part, items)
        return torch.cat([items, cold.unsqueeze(1).to(items.dtype)], dim=1).float().cpu().numpy()

    @torch.inference_mode()
    def user_vectors(self, histories: Sequence[np.ndarray], batch: int = 1024) -> np.ndarray:
        if self._frozen is None:
            self.net.eval()
            text_part, items = self._matrices()
            trained = self.net.trained
            trained_text, trained_items = text_part[trained], items[trained]
        else:  # serving: nothing to recompute, and eval() was set by freeze
            (text_part, items), (trained_text, trained_items) = self._frozen, self._frozen_trained
        out = np.zeros((len(histories), self.vector_dim), dtype=np.float32)
        for start in range(0, len(histories), batch):
            chunk = histories[start : start + batch]
            seqs = torch.as_tensor(left_pad(chunk, self.config.max_len), device=self.device)
            single = self._single if self._frozen is not None and len(chunk) == 1 else None
            h = (single if single is not None else self.net.encode_last)(seqs, items)
            # A user with no history gets the zero vector: every item scores 0.
            empty = (seqs < 0).all(dim=1)
            h[empty] = 0.0
            if self.config.text_view:
                shift = torch.logsumexp(h @ trained_items.T, dim=1) - torch.logsumexp(
                    h @ trained_text.T, dim=1
                )
                h = torch.cat([h, shift.unsqueeze(1)], dim=1)
            out[start : start + len(chunk)] = h.float().cpu().numpy()
        return out

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        scores = self.user_vectors(histories) @ self.item_vectors().T
        if not self.config.text:
            # Ids only: an item never trained has nothing but a random vector, so it ranks
            # last (cold-item recall is 0 by construction, as for any id model).
            scores[:, ~self.net.trained.cpu().numpy()] = -np.inf
        return scores

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), folder / "model.pt")
        (folder / "model_config.json").write_text(json.dumps(asdict(self.config), indent=2))
        (folder / "train_settings.json").write_text(self.settings.model_dump_json(indent=2))

    @classmethod
    def load(cls, folder: Path, text_vectors: np.ndarray, device: str = "auto") -> SeqRecommender:
        folder = Path(folder)
        settings = TrainSettings.model_validate_json((folder / "train_settings.json").read_text())
        settings = settings.model_copy(update={"device": device})
        model = cls(text_vectors, settings)
        state = torch.load(folder / "model.pt", map_location=model.device, weights_only=True)
        # Saved before the id gate existed: every id counted in full.
        state.setdefault("id_scale", torch.ones(model.n_items, device=model.device))
        model.net.load_state_dict(state)
        model.net.eval()
        return model


class EnsembleRecommender:
    """The mean of its members' scores; satisfies `tailor.models.base.Recommender`.

    Each member's score is a log-probability, so the mean is a product of experts. Its
    vectors are the members' side by side (users divided by the member count), so one inner
    product in the index gives exactly the mean score.
    """

    name = SeqRecommender.name

    def __init__(self, members: Sequence[SeqRecommender]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.config = self.members[0].config

    @property
    def vector_dim(self) -> int:
        return sum(m.vector_dim for m in self.members)

    def user_vectors(self, histories: Sequence[np.ndarray], batch: int = 1024) -> np.ndarray:
        parts = [m.user_vectors(histories, batch) for m in self.members]
        return np.concatenate(parts, axis=1) / len(self.members)

    def item_vectors(self, positions: np.ndarray | None = None) -> np.ndarray:
        return np.concatenate([m.item_vectors(positions) for m in self.members], axis=1)

    @property
    def n_items(self) -> int:
        return self.members[0].n_items

    def freeze(self) -> None:
        for member in self.members:
            member.freeze()

    def add_items(self, text_vectors: np.ndarray) -> np.ndarray:
        positions = [m.add_items(text_vectors) for m in self.members]
        self.config = self.members[0].config
        return positions[0]

    def update_item_texts(self, positions: np.ndarray, text_vectors: np.ndarray) -> None:
        for member in self.members:
            member.update_item_texts(positions, text_vectors)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        # The mean of the members' scores (what the concatenated vectors give), keeping a
        # member's -inf for items it cannot rank.
        return sum(m.score(histories) for m in self.members) / len(self.members)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"member-{i}" for i in range(len(self.members))]
        for name, member in zip(names, self.members, strict=True):
            member.save(folder / name)
        (folder / "members.json").write_text(json.dumps(names))


def load_recommender(
    folder: Path, text_vectors: np.ndarray, device: str = "auto"
) -> SeqRecommender | EnsembleRecommender:
    """A saved model or ensemble, whichever the folder holds."""
    folder = Path(folder)
    members_file = folder / "members.json"
    if members_file.is_file():
        names = json.loads(members_file.read_text())
        return EnsembleRecommender(
            [SeqRecommender.load(folder / name, text_vectors, device) for name in names]
        )
    return SeqRecommender.load(folder, text_vectors, device)


@dataclass
class RecipeFit:
    """The evaluation recipe's models: early-stopped on validation, then refit."""

    valid_model: SeqRecommender  # trained on train events, best validation epoch kept
    evaluated: SeqRecommender | EnsembleRecommender  # what is scored on test
    report: FitReport  # of the early-stopped fit
    seconds: float  # both fits
    windows: int  # windows both fits trained on


def refit_settings(settings: TrainSettings, best_epoch: int) -> TrainSettings:
    """What a refit trains with: from scratch for the best epoch count, or warm for
    `refit_epochs` at `refit_learning_rate`."""
    if not settings.refit_epochs:
        return settings.model_copy(update={"epochs": best_epoch})
    rate = settings.refit_learning_rate or settings.learning_rate
    return settings.model_copy(update={"epochs": settings.refit_epochs, "learning_rate": rate})


def fit_recipe(
    text_vectors: np.ndarray,
    settings: TrainSettings,
    seed: int,
    train: Sequence[np.ndarray],
    train_liked: Sequence[np.ndarray],
    refit: Sequence[np.ndarray],
    refit_liked: Sequence[np.ndarray],
    valid_fn: Callable[[SeqRecommender], float] | None,
    progress: bool = False,
) -> RecipeFit:
    """Train on `train`, early-stop on `valid_fn`; with `settings.refit`, refit on `refit` for
    the best number of epochs, and with `settings.ensemble` evaluate the mean of the two.

    The sequential model and the id-only baseline are trained by this one recipe, so they
    get the same budget and the same care.
    """
    model = SeqRecommender(text_vectors, settings, seed=seed)
    report = model.fit(train, seed=seed, valid_fn=valid_fn, progress=progress, liked=train_liked)
    seconds, windows = report.seconds, report.windows
    evaluated: SeqRecommender | EnsembleRecommender = model
    if settings.refit and valid_fn is not None:
        again = SeqRecommender(text_vectors, refit_settings(settings, report.best_epoch), seed)
        newest = False
        if settings.refit_epochs:
            # Warm start: the early-stopped weights only have the validation events to learn.
            again.net.load_state_dict(model.net.state_dict())
            newest = settings.refit_windows == "newest"
        refit_report = again.fit(
            refit, seed=seed, progress=progress, liked=refit_liked, newest_only=newest
        )
        seconds += refit_report.seconds
        windows += refit_report.windows
        evaluated = EnsembleRecommender([model, again]) if settings.ensemble else again
    return RecipeFit(model, evaluated, report, seconds, windows)


def fit_members(
    text_vectors: np.ndarray,
    settings: TrainSettings,
    seeds: Sequence[int],
    histories: Sequence[np.ndarray] | WindowFile,
    liked: Sequence[np.ndarray] | None = None,
    progress: bool = False,
    starts: Sequence[SeqRecommender] | None = None,
    newest_only: bool = False,
) -> tuple[SeqRecommender | EnsembleRecommender, list[list[float]], float, int]:
    """One model per seed on the same events for `settings.epochs` (no validation left), their
    mean when more than one: the production recipe. `histories` may be a window file
    (`fit_windows`: memory bounded whatever the events). With `starts` (one trained model per
    seed) each member continues from that model's weights instead of from scratch;
    `newest_only` then trains on each user's newest window alone (a window file is cut so by
    `write_windows`). Returns (model, losses per member, seconds, windows trained on).
    """
    if starts is not None and len(starts) != len(seeds):
        raise ValueError(f"{len(starts)} models to start from for {len(seeds)} members")
    members, losses, seconds, windows = [], [], 0.0, 0
    for i, seed in enumerate(seeds):
        member = SeqRecommender(text_vectors, settings, seed=seed)
        if starts is not None:
            member.net.load_state_dict(starts[i].net.state_dict())
        if isinstance(histories, WindowFile):
            report = member.fit_windows(histories, seed=seed, progress=progress)
        else:
            report = member.fit(
                histories, seed=seed, progress=progress, liked=liked, newest_only=newest_only
            )
        members.append(member)
        losses.append(report.losses)
        seconds += report.seconds
        windows += report.windows
    model = EnsembleRecommender(members) if len(members) > 1 else members[0]
    return model, losses, seconds, windows
