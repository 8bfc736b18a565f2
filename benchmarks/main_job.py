"""The main job (`tailor run`) timed on a quiet machine and next to other busy processes.

    python benchmarks/main_job.py [--busy 1] [--preset NAME] [--workdir DIR]

Runs `tailor run` from a fresh workdir twice, one after the other: first with the machine as it
is, then with `--busy` other processes each spinning one core at 100 %. Both runs start cold
(new workdir, new Prefect home, nothing cached), as a new user's first run does. Prints one row
per run: wall time, its ratio to the quiet run, CPU seconds, peak memory, the evaluation fit's
fine-tune time and torch threads (from the run's log), and the model's test NDCG@10, which
differs between the runs only as far as the fit's thread count does (`train.threads = auto`
trains on the cores idle when it starts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIT = re.compile(r"trained (\d+) epochs in ([\d.]+) s")
MODEL_ROW = re.compile(r"^\s+tailor-seq\s+([\d.]+)\s", re.MULTILINE)


def run_main_job(workdir: Path, preset: str | None, busy: int) -> dict:
    """One cold `tailor run` in `workdir` with `busy` spinning processes beside it."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    cmd = [sys.executable, "-m", "tailor.cli", "run", "--workdir", str(workdir)]
    if preset:
        cmd += ["--preset", preset]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    log = workdir.with_suffix(".log")
    try:
        began = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    text = log.read_text(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"tailor run failed (busy={busy}); its log, {log}, ends:\n{text[-3000:]}")
    fit = FIT.search(text)
    ndcg = MODEL_ROW.search(text)
    return {
        "busy": busy,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "fit_epochs": int(fit.group(1)) if fit else None,
        "fit_s": float(fit.group(2)) if fit else None,
        "threads": _threads_of(workdir),
        "ndcg_at_10": float(ndcg.group(1)) if ndcg else None,
        "log": str(log),
    }


def _threads_of(workdir: Path) -> int | None:
    """The evaluation fit's torch threads: the `train_threads` metric in the run's MLflow."""
    db = workdir / "mlflow.db"
    if not db.is_file():
        return None
    with sqlite3.connect(db) as con:
        query = "SELECT value FROM metrics WHERE key = 'train_threads' LIMIT 1"
        row = con.execute(query).fetchone()
    return int(row[0]) if row else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=1, help="spinning processes, second run")
    parser.add_argument("--preset", default=None, help="a named preset (default: the default)")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="tailor-main-job-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for busy in (0, args.busy):
        workdir = root / f"busy-{busy}"
        print(f"tailor run --workdir {workdir} with {busy} busy process(es) ...", flush=True)
        rows.append(run_main_job(workdir, args.preset, busy))
    quiet = rows[0]["wall_s"]
    print(f"\n## The main job (`tailor run`, fresh workdir), {os.cpu_count()} cores\n")
    print(
        "| other busy processes | wall | vs quiet | CPU s | peak memory MB "
        "| evaluation fit | torch threads | tailor-seq NDCG@10 |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        fit = f"{r['fit_s']:.1f} s ({r['fit_epochs']} epochs)" if r["fit_s"] is not None else "-"
        ndcg = f"{r['ndcg_at_10']:.4f}" if r["ndcg_at_10"] is not None else "-"
        print(
            f"| {r['busy']} | {_minutes(r['wall_s'])} | {r['wall_s'] / quiet:.2f}x "
            f"| {r['cpu_s']:.0f} | {r['peak_rss_mb']:.0f} | {fit} | {r['threads'] or '-'} "
            f"| {ndcg} |"
        )
    out = root / "main_job.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"\n(written to {out})")
    return 0


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


if __name__ == "__main__":
    sys.exit(main())
