"""The benchmark script runs end to end (tiny preset), so README figures can be redone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """`python benchmarks/<script> args...` from the repository root; fails on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_pipeline_benchmark_prints_its_tables(tmp_path):
    done = run_benchmark("pipeline.py", "--preset", "tiny", "--workdir", str(tmp_path))
    assert "## Stages" in done.stdout and "## Quality (test split)" in done.stdout
    result = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    stages = [row["stage"] for row in result["stages"]]
    assert stages[0] == "load + clean + split" and any(s.startswith("train") for s in stages)
    assert all(row["seconds"] >= 0 for row in result["stages"])
    assert "tailor-seq" in result["metrics"]


def test_scale_benchmark_prints_its_table_and_finds_the_exact_lists(tmp_path):
    done = run_benchmark(
        "scale.py",
        "--users",
        "1000,3000",
        "--items",
        "60000",
        "--events",
        "300000",
        "--part-events",
        "100000",
        "--workdir",
        str(tmp_path),
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 1,000 |")]
    rows += [line for line in done.stdout.splitlines() if line.startswith("| 3,000 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2].startswith("ivf")  # 60,000 items: past the exact limit
        assert float(cells[-1]) >= 0.95  # tuned to the target: the lists match exact search
    for stage in ("| cleaning in user partitions", "| whole data preparation in user"):
        line = [line for line in done.stdout.splitlines() if line.startswith(stage)]
        cells = [c.strip() for c in line[0].strip("|").split("|")]
        assert cells[1] == "300,000"
        assert 0.97 * 300_000 < int(cells[3].replace(",", "")) < 300_000  # 1 % defects rejected


def test_epoch_profile_prints_where_the_time_goes(tmp_path):
    options = ["--preset", "tiny", "--epochs", "1", "--workdir", str(tmp_path)]
    done = run_benchmark("profile_epoch.py", *options)
    rows = {
        line.split("|")[1].strip(): line
        for line in done.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    for part in ("backward", "forward (encoder)", "softmax losses", "validation pass"):
        assert part in rows, part
    share = float(rows["backward"].split("|")[3].strip().rstrip("%"))
    assert 0 < share < 100


def test_train_speed_benchmark_compares_the_two_recipes(tmp_path):
    # Two epochs for the old recipe keep it quick; the comparison's shape is what is tested.
    options = ["--preset", "tiny", "--workdir", str(tmp_path), "--resamples", "50"]
    done = run_benchmark("train_speed.py", *options, "--old-epochs", "2")
    lines = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    timing = {cells[0]: cells for cells in lines if len(cells) == 12}
    old, new = timing["old (early-stopped)"], timing["new default"]
    assert old[6] == "1.0x" and float(new[6].rstrip("x")) > 0
    assert float(new[5]) > 0 and float(old[5]) > 0  # fine-tune seconds
    assert all(0 <= float(v) <= 1 for v in new[8:12])  # the four test metrics
    differences = [cells for cells in lines if len(cells) == 5 and cells[0] == "new default"]
    assert len(differences) == 1
    assert all(cell.count("[") == 1 for cell in differences[0][1:])  # each with its interval


def test_train_speed_over_seeds_prints_each_seed_and_the_means(tmp_path):
    options = ["--preset", "tiny", "--workdir", str(tmp_path), "--resamples", "50"]
    done = run_benchmark("train_speed.py", *options, "--old-epochs", "2", "--seeds", "5,6")
    assert done.stdout.count("### seed ") == 2
    rows = {
        cells[0]: cells
        for line in done.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
        if len(cells) == 5 and not cells[1].startswith(("+", "-"))
    }
    old, new = rows["old (early-stopped)"], rows["new default"]
    assert old[4] == "1.0x" and float(new[4].rstrip("x")) > 0
    for cells in (old, new):
        per_seed = [float(v) for v in cells[1:3]]
        assert min(per_seed) > 0 and float(cells[3]) == pytest.approx(sum(per_seed) / 2, abs=0.06)
    assert (tmp_path / "train-speed" / "seed-5" / "new" / "result.json").is_file()
    assert (tmp_path / "train-speed" / "seed-6" / "old" / "result.json").is_file()


def test_train_scale_benchmark_times_both_window_paths_on_the_same_windows(tmp_path):
    options = ["--events", "20000", "--items", "3000", "--steps", "5", "--workdir", str(tmp_path)]
    done = run_benchmark("train_scale.py", *options)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 20,000 |")]
    assert [r.split("|")[3].strip() for r in rows] == [
        "in memory (fit)",
        "from the file (fit_windows)",
    ]
    windows = {r.split("|")[2].strip() for r in rows}
    assert len(windows) == 1 and int(windows.pop().replace(",", "")) > 0  # the same windows
    assert all(float(r.split("|")[5]) > 0 for r in rows)


def test_main_job_benchmark_times_the_quiet_and_the_busy_run(tmp_path):
    done = run_benchmark("main_job.py", "--preset", "tiny", "--workdir", str(tmp_path))
    rows = json.loads((tmp_path / "main_job.json").read_text())
    assert [r["busy"] for r in rows] == [0, 1]
    for r in rows:
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_mb"] > 100
        assert r["fit_epochs"] >= 1 and r["threads"] >= 1 and 0 < r["ndcg_at_10"] < 1
    # The busy run trains on the cores left idle: never more threads than the quiet run.
    assert rows[1]["threads"] <= rows[0]["threads"]
    assert "| 1 |" in done.stdout and "vs quiet" in done.stdout


def test_seed_spread_prints_each_seed_and_one_seed_twice_agrees(tmp_path):
    options = ["--preset", "tiny", "--workdir", str(tmp_path), "--threads", "1"]
    done = run_benchmark("seed_spread.py", *options, "--seeds", "0,0,1")
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and "---" not in line and cells[0] != "seed":
            rows.setdefault(cells[0], []).append(cells)
    first, again = rows["0"]
    assert first[2:] == again[2:]  # one seed, the same metrics to the last printed digit
    assert all(0 <= float(v) <= 1 for v in first[2:]) and float(first[1]) > 0
    assert len(rows["1"]) == 1 and "mean" in rows and "std" in rows


def test_query_precision_compares_int8_queries_with_float(tmp_path):
    options = ["--preset", "tiny", "--workdir", str(tmp_path), "--texts", "20"]
    done = run_benchmark("query_precision.py", *options)
    rows = {
        cells[0]: cells
        for line in done.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows["float32"][3:5] == ["1.000", "1.000"]  # the reference against itself
    assert rows["float32"][5] == "1.0000 / 1.0000"
    int8_mean, int8_min = (float(v) for v in rows["int8"][5].split(" / "))
    assert 0.97 < int8_min <= int8_mean < 1.0  # close to the float vectors, not equal
    assert float(rows["int8"][1]) > 0 and float(rows["float32"][1]) > 0


def test_als_solver_benchmark_times_the_grid_by_each_solver(tmp_path):
    done = run_benchmark("als_solver.py", "--preset", "tiny", "--workdir", str(tmp_path))
    rows = [line for line in done.stdout.splitlines() if line.startswith("| exact")]
    rows += [line for line in done.stdout.splitlines() if line.startswith("| CG, 3 steps")]
    assert len(rows) == 2
    assert rows[0].split("|")[3].strip() == "1.00x"
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) > 0 and 0 < float(cells[3]) <= 1  # seconds; test NDCG@10
    # One star per solver column: the chosen grid point.
    points = [line for line in done.stdout.splitlines() if line.startswith("| factors=")]
    assert len(points) == 8
    for column in (1, 2):
        assert sum(p.strip("|").split("|")[column].strip().endswith("*") for p in points) == 1


def test_compile_benchmark_times_eager_and_compiled_epochs_alike(tmp_path):
    done = run_benchmark(
        "compile_epoch.py", "--preset", "tiny", "--epochs", "2", "--workdir", str(tmp_path)
    )
    rows = {}
    for line in done.stdout.splitlines():
        if line.startswith(("| eager", "| compiled")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    assert set(rows) == {"eager", "compiled"}
    for cells in rows.values():
        assert float(cells[1]) > 0 and float(cells[2]) > 0
    # The compiled network is the same network: the same losses to the printed digits.
    eager, compiled = (list(map(float, rows[m][5].split(", "))) for m in ("eager", "compiled"))
    # (Compiled kernels sum in another order: losses drift apart by about 1e-4 in 2 epochs.)
    assert len(eager) == 2 and eager == pytest.approx(compiled, rel=1e-3)


def test_user_vector_benchmark_times_both_ways_to_the_same_vectors(tmp_path):
    done = run_benchmark(
        "user_vectors.py", "--preset", "tiny", "--rounds", "2", "--workdir", str(tmp_path)
    )
    rows = {}
    for line in done.stdout.splitlines():
        if line.startswith(("| full pass", "| last position")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    assert set(rows) == {"full pass", "last position"}
    for cells in rows.values():
        assert float(cells[1]) > 0 and float(cells[2]) > 0
    assert rows["full pass"][3] == "1.00x"
    gap = float(done.stdout.rsplit("vectors: ", 1)[1].split()[0])
    assert gap < 1e-4  # the same vectors, to floating-point rounding


def test_catalogue_softmax_benchmark_times_three_ways_to_the_same_gradients():
    done = run_benchmark(
        "catalogue_softmax.py", "--items", "300,2000", "--rows", "100", "--steps", "2"
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| 300 |", "| 2,000 |"))]
    assert len(rows) == 6
    for line in rows:
        _, way, ms, ratio, peak, difference = (c.strip() for c in line.strip("|").split("|"))
        assert float(ms) > 0 and float(peak) >= 0
        if way == "cross_entropy(addmm)":
            assert ratio == "1.00x" and float(difference) == 0
        elif way == "blocks fp32":
            assert float(difference) < 1e-5  # the same gradients, summed in blocks
        else:
            assert way == "blocks bf16" and 0 < float(difference) < 2e-2  # bf16's 8 bits


def test_sparse_benchmark_compares_every_level_against_sasrec(tmp_path):
    out = tmp_path / "out"
    done = run_benchmark(
        "sparse.py",
        *("--preset", "tiny", "--workdir", str(tmp_path), "--out", str(out)),
        *("--seeds", "1", "--shares", "0.5,1", "--item-cap", "3", "--draws", "2", "--jobs", "1"),
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 50% of events |")]
    assert {row.split("|")[2].strip() for row in rows} >= {"tailor", "SASRec-CE", "EASE"}
    assert any(line.startswith("| items <= 3 (") for line in done.stdout.splitlines())
    assert "## Ablation" in done.stdout and "| 100% of events | text only |" in done.stdout
    assert "cold-item recall@20, pooled (2 draws)" in done.stdout
    cells = json.loads((out / "sparse.json").read_text())["cells"]
    half = next(c for c in cells if c["level"] == 0.5)
    assert half["events"] < half["all_events"]  # the level really trained on fewer events
    assert half["vs_reference"]["sasrec"]["ndcg_at_10"][0] == 0.0  # against itself
    assert (out / "sparse.png").stat().st_size > 10_000
