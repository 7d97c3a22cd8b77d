"""Router quality against baselines, teacher allocation tables and plots."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from . import method

HIT_KS = (1, 3)


def knn_choices(train_features: np.ndarray, train_scores: np.ndarray, test_features: np.ndarray,
                k: int = 10) -> np.ndarray:
    """kNN router: the teacher with the best mean score over the k most similar training prompts."""
    a = train_features / np.linalg.norm(train_features, axis=1, keepdims=True).clip(1e-12)
    b = test_features / np.linalg.norm(test_features, axis=1, keepdims=True).clip(1e-12)
    k = min(k, len(a))
    neighbours = np.argsort(-(b @ a.T), axis=1)[:, :k]
    means = np.stack([method.mean_per_teacher(train_scores[idx]) for idx in neighbours])
    return method.nan_argmax(means)


def compare_routers(test_scores: np.ndarray, choices: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Hit@k of each named set of choices, plus the expected Hit@k of a random router."""
    table = {"random": {f"hit@{k}": method.random_hit_at_k(test_scores, k) for k in HIT_KS}}
    for name, chosen in choices.items():
        table[name] = {f"hit@{k}": method.hit_at_k(test_scores, chosen, k) for k in HIT_KS}
    return table


def format_table(rows: dict[str, dict[str, float]], *, key_header: str = "router") -> str:
    columns = list(next(iter(rows.values())).keys())
    width = max(len(key_header), *(len(r) for r in rows))
    lines = [f"{key_header:<{width}}  " + "  ".join(f"{c:>8}" for c in columns)]
    for name, row in rows.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{row[c]:>8.3f}" for c in columns))
    return "\n".join(lines)


def allocation(assigned: Sequence[str], teachers: Sequence[str]) -> dict[str, int]:
    """Prompts per teacher, every teacher listed (zero included), in pool order."""
    counts = Counter(assigned)
    unknown = set(counts) - set(teachers)
    if unknown:
        raise ValueError(f"assignments name unknown teacher(s): {', '.join(sorted(unknown))}")
    return {t: counts.get(t, 0) for t in teachers}


def format_allocation(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    width = max(len("teacher"), *(len(t) for t in counts))
    lines = [f"{'teacher':<{width}}  {'prompts':>7}  {'share':>6}"]
    for teacher, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        lines.append(f"{teacher:<{width}}  {n:>7}  {n / total:>6.1%}")
    return "\n".join(lines)


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


def plot_router_quality(table: dict[str, dict[str, float]], path: str | Path,
                        *, title: str = "Router quality on held-out prompts") -> Path:
    """Grouped bars of Hit@k per router."""
    plt = _pyplot()
    names = list(table)
    metrics = list(next(iter(table.values())))
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    for j, metric in enumerate(metrics):
        values = [table[n][metric] for n in names]
        bars = ax.bar(x + j * width, values, width, label=metric)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x + width * (len(metrics) - 1) / 2, names)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def holdout_comparison(prompts: Sequence[str], teachers: Sequence[str], scores: np.ndarray, *,
                       test_fraction: float = 1 / 3, seed: int = 0, backbone: str = "all-minilm-l6-v2",
                       knn_k: int = 10, cache=None) -> dict[str, dict[str, float]]:
    """Train a frozen-backbone router on part of the prompts; Hit@k on the rest against baselines.

    Baselines: random (expected value), the best single teacher on the training part
    (highest mean score) and a kNN router on the same embeddings.
    """
    from .router_training import TrainConfig, prompt_embeddings, train_router

    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test fraction must be in (0, 1)")
    order = np.random.default_rng(seed).permutation(len(prompts))
    n_test = max(1, int(round(len(prompts) * test_fraction)))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    router, _ = train_router([prompts[i] for i in train], teachers, scores[train],
                             TrainConfig(backbone=backbone, seed=seed), cache=cache)
    features = prompt_embeddings(router.encoder, backbone, prompts, cache)
    best_single = int(method.nan_argmax(method.mean_per_teacher(scores[train])[None])[0])
    return compare_routers(scores[test], {
        "best_single": np.full(len(test), best_single),
        f"knn@{knn_k}": knn_choices(features[train], scores[train], features[test], knn_k),
        "persyn": router.strengths_from_features(features[test]).argmax(axis=1),
    })
