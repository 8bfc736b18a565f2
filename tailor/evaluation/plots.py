"""Figures for run reports. matplotlib is imported inside the functions, never at import time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tailor.ranking.tail import head_mask


def plot_long_tail(
    popularity: np.ndarray,
    exposures: dict[str, np.ndarray],
    path: Path,
    head_share: float = 0.2,
    title: str = "Train popularity and recommendation exposure",
) -> Path:
    """Draw the long tail of train popularity with each model's exposure over it; save a PNG.

    x is the item's rank by train popularity (most popular first, ties to the lower index);
    the left log axis is train interactions, the right log axis is each model's share of all
    its list slots that went to the item. A dashed line marks the head/tail border (`head_mask`)
    and the legend gives the share of exposure each model spends on tail items.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    popularity = np.asarray(popularity)
    n_items = len(popularity)
    for name, counts in exposures.items():
        if len(counts) != n_items:
            raise ValueError(f"exposure of {name!r} covers {len(counts)} items, not {n_items}")
    order = np.argsort(-popularity, kind="stable")
    tail = ~head_mask(popularity, head_share)
    n_head = int((~tail).sum())
    ranks = np.arange(1, n_items + 1)

    fig = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # Log axes cannot show zero; items never seen in train or never listed are simply absent.
    train = popularity[order].astype(np.float64)
    train_tail = train[tail[order]].sum() / train.sum() if train.sum() > 0 else 0.0
    ax.fill_between(
        ranks,
        np.where(train > 0, train, np.nan),
        color="0.8",
        step="mid",
        label=f"train interactions ({train_tail:.1%} in tail)",
    )
    ax.set_yscale("log")
    ax.set_xlabel("item rank by train popularity")
    ax.set_ylabel("train interactions")
    ax.set_xlim(0.5, n_items + 0.5)
    ax.axvline(
        n_head + 0.5, color="black", linestyle="--", linewidth=1, label=f"head | tail ({n_head})"
    )

    share_ax = ax.twinx()
    share_ax.set_yscale("log")
    share_ax.set_ylabel("share of list slots")
    # One legend for both axes, so every curve is named in the same box.
    handles = list(ax.get_legend_handles_labels()[0])
    for name, counts in exposures.items():
        counts = np.asarray(counts, dtype=np.float64)[order]
        total = counts.sum()
        share = counts / total if total > 0 else counts
        tail_share = counts[tail[order]].sum() / total if total > 0 else 0.0
        (line,) = share_ax.plot(
            ranks,
            np.where(share > 0, share, np.nan),
            marker=".",
            markersize=3,
            linestyle="none",
            alpha=0.7,
            label=f"{name} ({tail_share:.1%} of exposure in tail)",
        )
        handles.append(line)
    ax.legend(handles=handles, loc="upper right", fontsize="small", markerscale=3)
    ax.set_title(title)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path


def plot_tradeoff(
    strengths: Sequence[float],
    accuracy: Sequence[float],
    tail_share: Sequence[float],
    path: Path,
    accuracy_name: str = "NDCG@10",
    tail_name: str = "APLT@20",
    chosen: float | None = None,
    baseline_points: dict[str, tuple[float, float]] | None = None,
) -> Path:
    """Draw the accuracy / long-tail trade-off of a re-ranking strength sweep; save a PNG.

    One point per strength at (tail share, accuracy), joined in strength order and labelled
    "s=<strength>". `chosen` (one of `strengths`) is ringed and named in the legend as the
    default. `baseline_points` maps a model name to its (tail share, accuracy) and is drawn as
    labelled markers, so the curve can be read against models without re-ranking.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    strengths_arr = np.asarray(strengths, dtype=np.float64)
    accuracy_arr = np.asarray(accuracy, dtype=np.float64)
    tail_arr = np.asarray(tail_share, dtype=np.float64)
    if strengths_arr.ndim != 1 or strengths_arr.size == 0:
        raise ValueError("strengths must be a non-empty sequence of numbers")
    if accuracy_arr.shape != strengths_arr.shape or tail_arr.shape != strengths_arr.shape:
        raise ValueError(
            f"strengths ({strengths_arr.size}), accuracy ({accuracy_arr.size}) and tail_share "
            f"({tail_arr.size}) must have one value per strength"
        )
    chosen_at = None
    if chosen is not None:
        hits = np.flatnonzero(np.isclose(strengths_arr, chosen, rtol=0.0, atol=1e-9))
        if hits.size == 0:
            raise ValueError(f"chosen strength {chosen} is not one of the swept strengths")
        chosen_at = int(hits[0])

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(
        tail_arr,
        accuracy_arr,
        color="tab:blue",
        marker="o",
        markersize=5,
        linewidth=1.5,
        label="tail re-ranking (s = strength)",
    )
    for strength, x, y in zip(strengths_arr, tail_arr, accuracy_arr, strict=True):
        ax.annotate(
            f"s={strength:g}",
            (x, y),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize="small",
            color="tab:blue",
        )
    if chosen_at is not None:
        ax.plot(
            tail_arr[chosen_at],
            accuracy_arr[chosen_at],
            linestyle="none",
            marker="o",
            markersize=14,
            markerfacecolor="none",
            markeredgecolor="tab:red",
            markeredgewidth=2,
            label=f"default strength {strengths_arr[chosen_at]:g}",
        )
    markers = ["s", "^", "D", "v", "P", "X", "<", ">", "*", "h"]
    for i, (name, (x, y)) in enumerate((baseline_points or {}).items()):
        ax.plot(
            x,
            y,
            linestyle="none",
            marker=markers[i % len(markers)],
            markersize=8,
            color=f"C{(i + 1) % 10}",
            label=name,
        )
        ax.annotate(name, (x, y), xytext=(5, -12), textcoords="offset points", fontsize="small")
    ax.set_xlabel(f"{tail_name} (share of tail items in the lists)")
    ax.set_ylabel(accuracy_name)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title(f"{accuracy_name} against {tail_name} by re-ranking strength")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path
