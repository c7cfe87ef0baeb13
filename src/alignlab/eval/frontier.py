"""The DPO paper's reward–KL frontier and Gao et al.'s overoptimisation view, as plots.

Frontier: every method's points (mean gold reward against mean sequence KL to the reference, both
measured the same way on the same held-out prompts), one line per method sorted by KL, the
starting model as a star. Overoptimisation: along one run's snapshots, proxy (reward-model) and
gold reward against √KL, on two axes, so a reader sees where raising the proxy stops raising gold.
"""

from __future__ import annotations

import math
from pathlib import Path

from alignlab.eval.figures import plt, save_figure

Point = dict  # {"model", "kl", "gold", "gold_se", ...}


def plot_frontier(methods: dict[str, list[Point]], baseline: Point | None, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (method, points) in enumerate(methods.items()):
        points = sorted(points, key=lambda p: p["kl"])
        ax.errorbar([p["kl"] for p in points], [p["gold"] for p in points],
                    yerr=[0 if math.isnan(p.get("gold_se", 0)) else p.get("gold_se", 0) for p in points],
                    marker="o", markersize=4, capsize=2, linewidth=1.2, label=method, color=plt.cm.tab10(i % 10))
    if baseline is not None:
        ax.scatter([baseline["kl"]], [baseline["gold"]], marker="*", s=140, color="black", zorder=5, label="start (SFT)")
    ax.set_xscale("symlog", linthresh=1.0)  # linear below 1 nat, logarithmic above: small and large KLs both readable
    ax.set_xlabel("KL(π ‖ π_ref), nats per sequence (symmetric log scale)")
    ax.set_ylabel("gold reward (mean over held-out prompts)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def plot_overoptimisation(runs: dict[str, list[Point]], path: Path) -> Path:
    """Per run: gold (solid) and proxy (dashed, right axis) reward against √KL along its snapshots,
    in training order (KL need not grow monotonically)."""
    fig, gold_ax = plt.subplots(figsize=(6.4, 4.2))
    proxy_ax = gold_ax.twinx()
    for i, (name, points) in enumerate(runs.items()):
        d = [math.sqrt(max(p["kl"], 0.0)) for p in points]
        color = plt.cm.tab10(i % 10)
        gold_ax.plot(d, [p["gold"] for p in points], marker="o", markersize=3, color=color, label=f"{name}: gold")
        proxy_ax.plot(d, [p.get("proxy", float("nan")) for p in points], linestyle="--", marker="x", markersize=3,
                      color=color, label=f"{name}: proxy (RM)")
    gold_ax.set_xlabel("√KL to the reference")
    gold_ax.set_ylabel("gold reward (solid)")
    proxy_ax.set_ylabel("proxy reward, reward model (dashed)")
    lines = gold_ax.get_legend_handles_labels()
    more = proxy_ax.get_legend_handles_labels()
    gold_ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower right")
    gold_ax.grid(alpha=0.3)
    return save_figure(fig, path)
