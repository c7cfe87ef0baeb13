"""Accuracy against the number of samples N for each way of choosing among them (a plot and a table)."""

from __future__ import annotations

import math
from pathlib import Path

from alignlab.eval.figures import plt, save_figure


def plot_accuracy_vs_n(methods: dict[str, list[dict]], path: Path, title: str) -> Path:
    """One line per method through its {"n", "accuracy", "accuracy_se"} points, N on a log2 axis."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (method, points) in enumerate(methods.items()):
        points = sorted(points, key=lambda p: p["n"])
        ax.errorbar([p["n"] for p in points], [p["accuracy"] for p in points],
                    yerr=[p.get("accuracy_se", 0.0) for p in points], marker="o", markersize=4, capsize=2,
                    linewidth=1.2, label=method, color=plt.cm.tab10(i % 10),
                    linestyle=":" if method.startswith("oracle") else "-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples per problem; beam search: width × expansions)")
    ax.set_ylabel("held-out accuracy (final answer exact match)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def accuracy_table(methods: dict[str, list[dict]]) -> str:
    """Markdown: one row per method, one column per N, "accuracy ± se" in each cell."""
    ns = sorted({p["n"] for points in methods.values() for p in points})
    lines = ["| method | " + " | ".join(f"N={n}" for n in ns) + " |", "|---" * (len(ns) + 1) + "|"]
    for method, points in methods.items():
        by_n = {p["n"]: p for p in points}
        cells = [
            f"{by_n[n]['accuracy']:.3f} ± {by_n[n]['accuracy_se']:.3f}"
            if n in by_n and not math.isnan(by_n[n]["accuracy"]) else "–"
            for n in ns
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["accuracy_table", "plot_accuracy_vs_n"]
