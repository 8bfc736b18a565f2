import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tailor.evaluation.plots import plot_long_tail


def test_plot_long_tail_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    popularity = (200 / np.arange(1, 61)).astype(np.int64)
    popularity[-5:] = 0  # never-seen items must not break the log axis
    exposures = {
        "most-popular": np.r_[np.full(10, 50), np.zeros(50, dtype=np.int64)],
        "text-cosine": rng.integers(0, 20, size=60),
    }
    out = plot_long_tail(popularity, exposures, tmp_path / "figures" / "long_tail.png")
    assert out == tmp_path / "figures" / "long_tail.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000


def test_plot_long_tail_rejects_misaligned_exposure(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_long_tail(np.ones(5), {"x": np.ones(4)}, tmp_path / "x.png")


def test_importing_plots_does_not_load_matplotlib() -> None:
    code = "import sys, tailor.evaluation.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
