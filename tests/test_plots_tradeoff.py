from pathlib import Path

import pytest

from tailor.evaluation.plots import plot_tradeoff

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_tradeoff_writes_a_png(tmp_path: Path) -> None:
    out = plot_tradeoff(
        [0.0, 0.25, 0.5, 0.75, 1.0],
        [0.081, 0.079, 0.074, 0.061, 0.040],
        [0.02, 0.10, 0.21, 0.38, 0.66],
        tmp_path / "figures" / "tradeoff.png",
        chosen=0.25,
        baseline_points={"most-popular": (0.0, 0.05), "text-cosine": (0.45, 0.02)},
    )
    assert out == tmp_path / "figures" / "tradeoff.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000


def test_plot_tradeoff_minimal_call(tmp_path: Path) -> None:
    out = plot_tradeoff([0.0], [0.1], [0.2], tmp_path / "one.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_tradeoff_rejects_misaligned_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one value per strength"):
        plot_tradeoff([0.0, 0.5], [0.1], [0.2, 0.3], tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-empty"):
        plot_tradeoff([], [], [], tmp_path / "x.png")
    with pytest.raises(ValueError, match="chosen"):
        plot_tradeoff([0.0, 0.5], [0.1, 0.09], [0.2, 0.3], tmp_path / "x.png", chosen=0.3)
    assert not (tmp_path / "x.png").exists()
