"""The bundle's language model for short texts at serving time (queries, profiles, new items)."""

from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from tailor import columns as C
from tailor.models.bundle import Bundle
from tailor.models.encoder import OnnxEncoder, TransformerEncoder, encoder_id, pick_device
from tailor.settings import EmbedSettings

log = logging.getLogger(__name__)


class TextVectors:
    """The bundle's encoder for short texts (queries, profiles, new items), with an LRU cache
    and micro-batching.

    Requests that arrive while the encoder is busy are encoded together in its next pass: on a
    CPU one short text costs ~11 ms and eight cost ~25 ms, so under load batching multiplies
    what one core sustains instead of letting a queue grow. Thread-safe; one worker thread
    (started on first use) owns the model.
    """

    def __init__(
        self,
        embed: EmbedSettings,
        cache_size: int = 10_000,
        max_batch: int = 32,
        int8: bool = False,
        backend: str = "torch",
        cache_dir: Path | None = None,
        threads: int = 1,
        max_pending: int = 0,
    ) -> None:
        self.embed = embed
        # Texts waiting for the encoder at most (0 = unbounded): beyond it `submit` refuses
        # with EncoderBusyError instead of letting the queue, and every wait in it, grow.
        self.max_pending = max_pending
        self._pending = 0
        self.model_id = encoder_id(embed)
        self.int8 = int8
        self.backend = "torch"
        self.encoder = None
        on_cpu = pick_device(embed.device) == "cpu"
        if backend == "onnx" and on_cpu and cache_dir is not None:
            try:
                self.encoder = OnnxEncoder(embed, cache_dir, int8=int8, threads=threads)
                self.backend = "onnx"
            except Exception as e:  # an encoder ONNX cannot take still serves, just slower
                log.warning("ONNX Runtime unavailable for %s (%s); using PyTorch", self.model_id, e)
        if self.encoder is None:
            self.encoder = TransformerEncoder(embed)
            self.int8 = int8 and on_cpu
            if self.int8:
                self._quantize()
        self.dim = self.encoder.dim
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[tuple[list[str], Future]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def _quantize(self) -> None:
        """int8 weights for the linear layers (CPU only): ~2.4x faster short texts. Their
        activations are quantised with one scale per pass, so each text gets a pass of its
        own (as `OnnxEncoder` does in int8): a vector never depends on its batch."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            self.encoder.model = torch.ao.quantization.quantize_dynamic(
                self.encoder.model, {torch.nn.Linear}, dtype=torch.qint8
            )
        self.encoder.settings = self.encoder.settings.model_copy(update={"batch_size": 1})

    @property
    def pending(self) -> int:
        """Texts waiting for the encoder (the queue `max_pending` bounds)."""
        return self._pending

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.submit(texts).result()

    def submit(self, texts: Sequence[str]) -> Future:
        """A future of the (len(texts), dim) vectors; cache hits resolve at once."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for row, text in enumerate(texts):
                hit = self._cache.get(text)
                if hit is None:
                    missing.setdefault(text, []).append(row)
                else:
                    self._cache.move_to_end(text)
                    out[row] = hit
            if missing and self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name="tailor-encoder", daemon=True
                )
                self._worker.start()
        done: Future = Future()
        if not missing:
            done.set_result(out)
            return done
        todo = list(missing)
        with self._lock:
            if self.max_pending and self._pending + len(todo) > self.max_pending:
                raise EncoderBusyError(
                    f"the encoder has {self._pending} texts waiting (serve.encoder_queue_texts "
                    f"= {self.max_pending}); retry shortly"
                )
            self._pending += len(todo)
        job: Future = Future()

        def fill(finished: Future) -> None:
            error = finished.exception()
            if error is not None:
                done.set_exception(error)
                return
            for text, vector in zip(todo, finished.result(), strict=True):
                out[missing[text]] = vector
            done.set_result(out)

        job.add_done_callback(fill)
        self._jobs.put((todo, job))
        return done

    def _run(self) -> None:
        while True:
            batch = [self._jobs.get()]
            size = len(batch[0][0])
            while size < self._max_batch:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
                size += len(batch[-1][0])
            unique = list(dict.fromkeys(t for texts, _ in batch for t in texts))
            try:
                vectors = self.encoder.encode(unique)
            except Exception as e:  # every waiting request gets the error, none hangs
                with self._lock:
                    self._pending -= sum(len(texts) for texts, _ in batch)
                for _, job in batch:
                    job.set_exception(e)
                continue
            row = {t: i for i, t in enumerate(unique)}
            with self._lock:
                if self._size:
                    for text, vector in zip(unique, vectors, strict=True):
                        self._cache[text] = vector
                        self._cache.move_to_end(text)
                    while len(self._cache) > self._size:
                        self._cache.popitem(last=False)
                self._pending -= sum(len(texts) for texts, _ in batch)
            for texts, job in batch:
                job.set_result(vectors[[row[t] for t in texts]])


class EncoderBusyError(RuntimeError):
    """Too many texts are waiting for the encoder: the request should be retried."""


class NoTextSpaceError(ValueError):
    """The bundle's item vectors came from a file: there is no encoder for text requests."""


def has_text_space(bundle: Bundle) -> bool:
    """False when item vectors were supplied (data.item_vectors_path) rather than embedded:
    queries and new items cannot be put into that space."""
    return not (bundle.settings.get("data") or {}).get("item_vectors_path")


def check_encoder(texts: TextVectors, bundle: Bundle, tolerance: float = 0.99) -> None:
    """Refuse to serve when the encoder does not reproduce the bundle's text vectors: queries
    and new items would land in a different space from the catalogue."""
    if bundle.n_items == 0:
        return
    probe = bundle.items[C.TEXT][0]
    cos = float(texts.encode([probe])[0] @ bundle.text_vectors[0])
    if cos < tolerance:
        raise RuntimeError(
            f"encoder {texts.model_id} gives cosine {cos:.3f} with the bundle's vector for item "
            f"{bundle.item_ids[0]!r}; the bundle was embedded with another encoder (its "
            "settings.json names the one to use)"
        )
