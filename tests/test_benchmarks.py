"""The benchmark script runs end to end (tiny preset), so README figures can be redone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pipeline_benchmark_prints_its_tables(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/pipeline.py", "--preset", "tiny", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "## Stages" in done.stdout and "## Quality (test split)" in done.stdout
    result = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    stages = [row["stage"] for row in result["stages"]]
    assert stages[0] == "load + clean + split" and any(s.startswith("train") for s in stages)
    assert all(row["seconds"] >= 0 for row in result["stages"])
    assert "tailor-seq" in result["metrics"]
