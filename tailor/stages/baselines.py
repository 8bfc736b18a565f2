"""The baselines' fits, in a child process beside the evaluation fit.

The id-only sequential baselines (SASRec, GRU4Rec) and the grid searches of the others do not
depend on the sequential model, so they need not wait for it. On two cores each fit runs on
one thread, side by side: two single-threaded fits finish sooner than the same two fits one
after the other on two threads each (torch's second thread buys far less than a second
core). A child process, not a thread, because torch's random generator and its
deterministic-kernel switch are process-wide: two fits in one process would draw from one
generator in an order nobody chose.

The child gets its request (paths, and the settings as JSON) on standard input, so nothing of
the settings is written to disk, and writes `baselines.json` plus one folder per id-only
model; the parent reads those back (`load_baseline_fits`): JSON and model weights loaded as
tensors, nothing unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailor.evaluation.compare import BaselineFits, Exam, Trial, fit_baselines
from tailor.models.hardware import free_cores
from tailor.models.sequential import load_recommender
from tailor.settings import Settings
from tailor.stages.data import PreparedData, load_histories
from tailor.stages.embed import load_text_vectors

FITS_FILE = "baselines.json"
LOG_FILE = "baselines.log"


@dataclass(frozen=True)
class FittedBaselines:
    """Where a child process left the baselines' fits (see `load_baseline_fits`)."""

    out_dir: Path
    seconds: float  # the child's wall time, start-up included
    threads: int  # torch threads of its fits


def side_by_side(settings: Settings, lanes: int = 2) -> Settings:
    """`settings` for one of `lanes` fits running at once: with `train.threads = auto`, the
    free cores shared between them (at least one each); an explicit count is kept."""
    if settings.train.threads != "auto":
        return settings
    threads = max(1, free_cores() // lanes)
    return settings.model_copy(
        update={"train": settings.train.model_copy(update={"threads": threads})}
    )


def fit_baselines_in_child(
    prepared: PreparedData,
    vectors_path: Path,
    settings: Settings,
    out_dir: Path,
    frozen_vectors_path: Path | None = None,
) -> FittedBaselines:
    """Run `fit_and_save_baselines` in a new Python process and wait for it.

    Its log goes to `out_dir/baselines.log`; a failure raises with the log's end.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    request = {
        "prepared": _encode(prepared),
        "vectors_path": str(vectors_path),
        "frozen_vectors_path": str(frozen_vectors_path) if frozen_vectors_path else None,
        "out_dir": str(out_dir),
        "settings": json.loads(settings.model_dump_json()),
    }
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    threads = settings.train.threads
    if isinstance(threads, int):
        # numpy's BLAS (the grid searches) would otherwise start a thread per core of its own.
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(threads)
    log_path = out_dir / LOG_FILE
    began = time.perf_counter()
    with open(log_path, "w") as log_file:
        done = subprocess.run(
            [sys.executable, "-m", "tailor.stages.baselines"],
            input=json.dumps(request),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            env=env,
        )
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(
            f"the baselines' child process failed (exit code {done.returncode}); "
            f"{log_path} ends:\n{tail}"
        )
    saved = json.loads((out_dir / FITS_FILE).read_text())
    return FittedBaselines(out_dir, time.perf_counter() - began, int(saved["threads"]))


def fit_and_save_baselines(
    prepared: PreparedData,
    vectors_path: Path,
    settings: Settings,
    out_dir: Path,
    frozen_vectors_path: Path | None = None,
) -> Path:
    """`fit_baselines` on this run's protocol, saved to `out_dir` (what the child does)."""
    import torch

    out_dir = Path(out_dir)
    exam = Exam(load_histories(prepared), settings.eval)
    vectors, frozen = load_text_vectors(vectors_path, frozen_vectors_path)
    fits = fit_baselines(exam, vectors, settings.train, settings.seed, frozen)
    saved: dict[str, Any] = {"threads": torch.get_num_threads(), "id_models": {}, "searches": {}}
    for name, (valid_model, refit_model, params) in fits.id_models.items():
        valid_model.save(out_dir / name / "valid")
        refit_model.save(out_dir / name / "model")
        saved["id_models"][name] = params
    for name, (best, trials, _) in fits.searches.items():
        saved["searches"][name] = {
            "best": best,
            "trials": [[t.model, t.params, t.valid_ndcg_at_10] for t in trials],
        }
    path = out_dir / FITS_FILE
    part = path.with_suffix(".part")
    part.write_text(json.dumps(saved, indent=2))
    os.replace(part, path)
    return path


def load_baseline_fits(
    fitted: FittedBaselines, text_vectors: np.ndarray, device: str = "auto"
) -> BaselineFits:
    """The child's fits as `evaluate_models` takes them (searched models are refit there)."""
    saved = json.loads((fitted.out_dir / FITS_FILE).read_text())
    fits = BaselineFits()
    for name, params in saved["id_models"].items():
        folder = fitted.out_dir / name
        fits.id_models[name] = (
            load_recommender(folder / "valid", text_vectors, device),
            load_recommender(folder / "model", text_vectors, device),
            params,
        )
    for name, search in saved["searches"].items():
        trials = [Trial(model, params, score) for model, params, score in search["trials"]]
        fits.searches[name] = (search["best"], trials, None)
    return fits


def _encode(prepared: PreparedData) -> dict[str, Any]:
    return {
        f.name: str(v) if isinstance(v, Path) else v
        for f in dataclasses.fields(prepared)
        for v in [getattr(prepared, f.name)]
    }


def _decode(fields: dict[str, Any]) -> PreparedData:
    paths = {f.name for f in dataclasses.fields(PreparedData) if "Path" in str(f.type)}
    return PreparedData(
        **{k: Path(v) if k in paths and v is not None else v for k, v in fields.items()}
    )


def _main() -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    request = json.loads(sys.stdin.read())
    frozen = request["frozen_vectors_path"]
    fit_and_save_baselines(
        _decode(request["prepared"]),
        Path(request["vectors_path"]),
        Settings.model_validate(request["settings"]),
        Path(request["out_dir"]),
        Path(frozen) if frozen else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(_main())
