"""The guard's block-rate / false-positive curves as a plot."""

from __future__ import annotations

import math
from pathlib import Path

from alignlab.eval.figures import plt, save_figure


def plot_curves(curves: dict[str, list[dict]], operating: dict[str, dict], max_fpr: float, path: Path,
                title: str) -> Path:
    """Left: block rate against pooled false-positive rate, one line per classifier, its operating
    point marked. Right: both rates against the threshold (single-threshold curves only)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    for i, (name, points) in enumerate(curves.items()):
        colour = plt.cm.tab10(i % 10)
        left.step([p["false_positive_rate"] for p in points], [p["block_rate"] for p in points], where="post",
                  color=colour, label=name, linewidth=1.4)
        op = operating.get(name)
        if op is not None:
            left.scatter([op["false_positive_rate"]], [op["block_rate"]], color=colour, zorder=5, s=40)
        if "threshold" not in points[0]:
            continue  # a two-threshold frontier has no single threshold to plot against
        finite = [p for p in points if math.isfinite(p["threshold"])]
        right.plot([p["threshold"] for p in finite], [p["block_rate"] for p in finite], color=colour,
                   label=f"{name}: block rate")
        right.plot([p["threshold"] for p in finite], [p["false_positive_rate"] for p in finite], color=colour,
                   linestyle="--", label=f"{name}: false positives")
    left.axvline(max_fpr, color="grey", linestyle=":", linewidth=1)
    left.set_xlabel("false-positive rate (benign and look-alike prompts)")
    left.set_ylabel("block rate (held-out harmful prompts)")
    left.set_xlim(-0.02, 1.02)
    left.set_ylim(-0.02, 1.02)
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    left.set_title(title, fontsize=10)
    right.set_xlabel("threshold (blocked when score >= threshold)")
    right.set_ylabel("rate")
    right.set_xlim(0, 1)
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    return save_figure(fig, path)
