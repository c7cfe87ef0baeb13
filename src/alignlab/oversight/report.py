"""A markdown table and a bar chart (Wilson whiskers) of accuracies, for the debate and sandwich stages."""

from __future__ import annotations

import math
from pathlib import Path

from alignlab.eval.figures import plt, save_figure


def accuracy_table(rows: dict[str, dict], confidence: float, label: str = "protocol") -> str:
    """Markdown: one row per entry {"accuracy", "low", "high", "n"}."""
    pct = f"{100 * confidence:g}%"
    lines = [f"| {label} | accuracy | {pct} interval (Wilson) | items |", "|---|---|---|---|"]
    for name, row in rows.items():
        if math.isnan(row["accuracy"]):
            lines.append(f"| {name} | – | – | {row['n']} |")
        else:
            lines.append(f"| {name} | {row['accuracy']:.3f} | [{row['low']:.3f}, {row['high']:.3f}] | {row['n']} |")
    return "\n".join(lines) + "\n"


def gain_table(gains: dict[str, dict], unit: str) -> str:
    """Markdown: one row per paired gain {"gain", "low", "high"}, bootstrapped over `unit`."""
    lines = [f"| paired gain | mean | interval (bootstrap over {unit}) |", "|---|---|---|"]
    lines += [f"| {name} | {g['gain']:+.3f} | [{g['low']:+.3f}, {g['high']:+.3f}] |" for name, g in gains.items()]
    return "\n".join(lines) + "\n"


def plot_accuracies(rows: dict[str, dict], path: Path, title: str, confidence: float) -> Path:
    """One bar per entry, whiskers from its interval, chance (0.5) dashed."""
    names = list(rows)
    values = [rows[n]["accuracy"] for n in names]
    lower = [max(0.0, v - rows[n]["low"]) for n, v in zip(names, values)]
    upper = [max(0.0, rows[n]["high"] - v) for n, v in zip(names, values)]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2.4, 4.2))
    bars = ax.bar(range(len(names)), values, yerr=[lower, upper], capsize=5,
                  color=[plt.cm.tab10(i % 10) for i in range(len(names))], alpha=0.85)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, 0.02, f"{v:.2f}", ha="center", va="bottom", fontsize=9)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(names)), names, fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"accuracy ({100 * confidence:g}% Wilson interval)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


__all__ = ["accuracy_table", "gain_table", "plot_accuracies"]
