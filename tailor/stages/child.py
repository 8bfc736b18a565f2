"""A stage in a child Python process, beside the parent's own work.

On a machine of few cores two single-threaded stages side by side finish sooner than the same
two one after the other on every core: a fit gains far less from its second thread than from a
second core. A process, not a thread, because torch's thread count, its random generator and
its deterministic-kernel switch are process-wide: two fits in one process would draw from one
generator in an order nobody chose.

The request (paths, and the settings as JSON) goes to the child on standard input, so nothing
of the settings is written to disk; the child writes its answer as JSON (plus whatever files
the stage makes). Nothing is pickled in either direction.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

from tailor.models.hardware import free_cores
from tailor.settings import REVEAL_URLS, SECRET_FIELDS, Settings

T = TypeVar("T")


def side_by_side(settings: Settings, lanes: int = 2) -> Settings:
    """`settings` for one of `lanes` fits running at once: with `train.threads = auto`, the
    free cores shared between them (at least one each); an explicit count is kept."""
    if settings.train.threads != "auto":
        return settings
    threads = max(1, free_cores() // lanes)
    return settings.model_copy(
        update={"train": settings.train.model_copy(update={"threads": threads})}
    )


def settings_for_child(settings: Settings) -> dict[str, Any]:
    """`settings` as JSON for a child's request, without the keys: no child needs one, and a
    key dumped masked would come back as a wrong key rather than none. Connection URLs go
    whole (the child connects with them), on its standard input, never in a log."""
    return settings.model_dump(mode="json", exclude=SECRET_FIELDS, context={REVEAL_URLS: True})


def run_in_child(
    module: str, request: dict[str, Any], log_path: Path, threads: int | str | None
) -> float:
    """Run `python -m module` with `request` on its standard input and wait for it; returns
    its wall seconds. Its output goes to `log_path`; a failure raises with the log's end.

    `threads` (an int) also caps numpy's BLAS threads, which would otherwise start one per
    core of their own beside the parent's work.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if isinstance(threads, int):
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(threads)
    began = time.perf_counter()
    with open(log_path, "w") as log_file:
        done = subprocess.run(
            [sys.executable, "-m", module],
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
            f"the child process `{module}` failed (exit code {done.returncode}); "
            f"{log_path} ends:\n{tail}"
        )
    return time.perf_counter() - began


def read_request() -> dict[str, Any]:
    """In the child: its request, with logging to standard output (the parent's log file)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return json.loads(sys.stdin.read())


def write_answer(path: Path, answer: dict[str, Any]) -> None:
    """Write the child's answer whole or not at all: the parent reads it only after exit 0."""
    path = Path(path)
    part = path.with_suffix(".part")
    part.write_text(json.dumps(answer, indent=2))
    os.replace(part, path)


def to_json(record: Any) -> dict[str, Any]:
    """A dataclass's fields as JSON values (paths as strings)."""
    return {
        f.name: str(v) if isinstance(v, Path) else v
        for f in dataclasses.fields(record)
        for v in [getattr(record, f.name)]
    }


def from_json(cls: type[T], fields: dict[str, Any]) -> T:
    """`to_json`'s inverse: the fields typed as paths become paths again."""
    paths = {f.name for f in dataclasses.fields(cls) if "Path" in str(f.type)}
    return cls(**{k: Path(v) if k in paths and v is not None else v for k, v in fields.items()})
