"""PNG figures (teacher allocation, router quality) for people who would rather look than read."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_allocation(counts: dict[str, int], path: str | Path, *, title: str = "Teacher allocation") -> Path:
    """Horizontal bar chart of the share of prompts routed to each teacher."""
    plt = _pyplot()
    items = sorted(counts.items(), key=lambda kv: kv[1])
    total = sum(counts.values()) or 1
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(items) + 1.2))
    ax.barh([t for t, _ in items], [100 * n / total for _, n in items], color="#3b6ea8")
    for i, (_, n) in enumerate(items):
        ax.text(100 * n / total, i, f" {n}", va="center", fontsize=8)
    ax.set_xlabel("% of prompts")
    ax.set_title(title)
    return _save(fig, path)


def plot_router_quality(summaries: dict[str, dict[str, dict[str, dict[str, float]]]], path: str | Path,
                        *, title: str = "Router quality on held-out prompts") -> Path:
    """One panel per ground truth (e.g. per alpha): grouped bars of mean Hit@k per router over
    seeded splits, with the standard deviation as error bars.

    ``summaries`` maps a panel label to ``{router: {metric: {"mean": .., "std": ..}}}``.
    """
    plt = _pyplot()
    panels = list(summaries)
    names = list(summaries[panels[0]])
    metrics = list(summaries[panels[0]][names[0]])
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    fig, axes = plt.subplots(1, len(panels), figsize=((1.1 * len(names) + 1.5) * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        table = summaries[panel]
        for j, metric in enumerate(metrics):
            means = [table[n][metric]["mean"] for n in names]
            bars = ax.bar(x + j * width, means, width, yerr=[table[n][metric]["std"] for n in names],
                          capsize=2, label=metric)
            ax.bar_label(bars, fmt="%.2f", fontsize=6)
        ax.set_xticks(x + width * (len(metrics) - 1) / 2, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_title(panel, fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_curves(curves: dict[str, dict[float, dict[str, float]]], path: str | Path, *, xlabel: str, ylabel: str,
                title: str, dashed: tuple[str, ...] = ()) -> Path:
    """One line per name over x, with the standard deviation as a band: ``{name: {x: {"mean", "std"}}}``;
    the ``dashed`` names (baselines) drawn dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, points in curves.items():
        xs = sorted(points)
        mean = np.array([points[x]["mean"] for x in xs])
        std = np.array([points[x]["std"] for x in xs])
        line, = ax.plot(xs, mean, marker="o", label=name, linestyle="--" if name in dashed else "-",
                        alpha=0.8)
        ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_loss(losses: list[tuple[int, float]], path: str | Path, *, title: str = "Training loss") -> Path:
    """Training loss per optimiser step (the response tokens' mean NLL)."""
    plt = _pyplot()
    steps, values = zip(*losses)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(steps, values, marker="." if len(steps) < 60 else None, color="#3b6ea8")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_accuracy_with_intervals(results: dict[str, tuple[float, float, float]], path: str | Path,
                                 *, title: str = "Student accuracy") -> Path:
    """One bar per run: accuracy with its confidence interval, ``{name: (acc, low, high)}``."""
    plt = _pyplot()
    names = list(results)
    acc = np.array([results[n][0] for n in names])
    err = np.array([[acc[i] - results[n][1], results[n][2] - acc[i]] for i, n in enumerate(names)]).T
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    bars = ax.bar(names, 100 * acc, yerr=100 * err, capsize=4, color="#3b6ea8")
    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, max(5.0, 100 * float(np.max(acc + err[1])) * 1.15))
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_cost_quality(curves: dict[str, list[tuple[float, float]]], path: str | Path, *,
                      marks: dict[str, tuple[float, float]] | None = None, xlabel: str = "expected cost ($)",
                      ylabel: str = "quality", title: str = "Cost-quality curve") -> Path:
    """One line per curve of (cost, quality) points, and labelled single points (``marks``) beside them."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker=".", label=label)
    for label, (x, y) in (marks or {}).items():
        ax.scatter([x], [y], marker="x", color="black", zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
