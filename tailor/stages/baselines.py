"""The baselines' fits, in a child process beside the evaluation fit.

The id-only sequential baselines (SASRec, GRU4Rec) and the grid searches of the others do not
depend on the sequential model, so they need not wait for it: on two cores each runs on one
thread, side by side with it (`tailor.stages.child` says why a process).

The child writes `baselines.json` plus one folder per id-only model; the parent reads those
back (`load_baseline_fits`): JSON and model weights loaded as tensors, nothing unpickled.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailor.evaluation.compare import BaselineFits, Exam, Trial, fit_baselines
from tailor.models.sequential import load_recommender
from tailor.settings import Settings
from tailor.stages.child import (
    from_json,
    read_request,
    run_in_child,
    settings_for_child,
    to_json,
    write_answer,
)
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
    request = {
        "prepared": to_json(prepared),
        "vectors_path": str(vectors_path),
        "frozen_vectors_path": str(frozen_vectors_path) if frozen_vectors_path else None,
        "out_dir": str(out_dir),
        "settings": settings_for_child(settings),
    }
    seconds = run_in_child(
        "tailor.stages.baselines", request, out_dir / LOG_FILE, settings.train.threads
    )
    saved = json.loads((out_dir / FITS_FILE).read_text())
    return FittedBaselines(out_dir, seconds, int(saved["threads"]))


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
    write_answer(path, saved)
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


def _main() -> int:
    request = read_request()
    frozen = request["frozen_vectors_path"]
    fit_and_save_baselines(
        from_json(PreparedData, request["prepared"]),
        Path(request["vectors_path"]),
        Settings.model_validate(request["settings"]),
        Path(request["out_dir"]),
        Path(frozen) if frozen else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(_main())
