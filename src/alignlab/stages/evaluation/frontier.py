"""The reward–KL frontier table and plots from an evaluate stage (and a best-of-N stage).

Methods are named groups of evaluated models (`fnmatch` patterns allowed, e.g. `dpo_*`). Best-of-N
points come from a `best_of_n` stage, whose KL is the analytic log N − (N−1)/N. Runs listed under
`overoptimisation` must have been evaluated with their snapshots (`evaluate.snapshots`): their
proxy and gold reward are plotted against √KL.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from pydantic import Field

from alignlab.eval.frontier import plot_frontier, plot_overoptimisation
from alignlab.eval.report import _fmt
from alignlab.stages.common import StageConfig, finish, stage_metrics
from alignlab.files import write_text_atomic


class FrontierConfig(StageConfig):
    evaluate: str = Field(description="directory of an evaluate stage")
    methods: dict[str, list[str]] = Field(description="method -> evaluated model names or patterns")
    best_of_n: str | None = Field(None, description="directory of a best_of_n stage")
    baseline: str = "sft"
    overoptimisation: list[str] = Field(default_factory=list, description="runs whose snapshots were evaluated")
    title: str = "reward–KL frontier"




def _point(name: str, m: dict) -> dict:
    return {"model": name, "kl": m.get("kl_mean", 0.0), "gold": m["gold_mean"], "gold_se": m.get("gold_se", 0.0),
            "proxy": m.get("proxy_mean", float("nan")), "length": m.get("length_mean", float("nan"))}


def run(cfg: FrontierConfig, out: Path) -> dict:
    models = stage_metrics(cfg.evaluate)["models"]
    if cfg.baseline not in models:
        raise ValueError(f"baseline {cfg.baseline!r} is not among the evaluated models: {', '.join(models)}")
    methods: dict[str, list[dict]] = {}
    for method, patterns in cfg.methods.items():
        names = [n for n in models if "@" not in n and any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not names:
            raise ValueError(f"method {method!r}: no evaluated model matches {patterns}")
        methods[method] = [_point(n, models[n]) for n in names]
    if cfg.best_of_n:
        methods["best-of-N"] = [
            {"model": f"best-of-{p['n']}", "kl": p["kl_bound"], "gold": p["gold_mean"], "gold_se": p["gold_se"],
             "proxy": p.get("proxy_mean", float("nan")), "length": p.get("length_mean", float("nan"))}
            for p in stage_metrics(cfg.best_of_n)["points"]
        ]
    base = _point(cfg.baseline, models[cfg.baseline])
    plot_frontier(methods, base, out / "frontier.png", cfg.title)
    runs = {r: sorted((_point(n, m) for n, m in models.items() if n.startswith(f"{r}@")), key=lambda p: p["model"])
            for r in cfg.overoptimisation}  # snapshot names sort in training order
    missing = [r for r, points in runs.items() if not points]
    if missing:
        raise ValueError(f"overoptimisation: no evaluated snapshots for {missing}; add them to evaluate.snapshots")
    if runs:
        plot_overoptimisation({r: [base, *points] for r, points in runs.items()}, out / "overoptimisation.png")

    best = {m: max(points, key=lambda p: p["gold"]) for m, points in methods.items()}
    lines = [f"# {cfg.title}", "", "![frontier](frontier.png)", ""]
    if runs:
        lines += ["![overoptimisation](overoptimisation.png)", ""]
    lines += [f"Start ({cfg.baseline}): gold {base['gold']:.3f}.", "",
              "| method | model | gold reward | ± se | gain over start | KL to start | proxy | length |",
              "|---|---|---|---|---|---|---|---|"]
    for method, points in methods.items():
        for p in sorted(points, key=lambda p: p["kl"]):
            mark = " **(best)**" if p is best[method] else ""
            lines.append(f"| {method} | {p['model']}{mark} | {_fmt(p['gold'])} | {_fmt(p['gold_se'])} "
                         f"| {p['gold'] - base['gold']:+.3f} | {_fmt(p['kl'], 2)} | {_fmt(p['proxy'], 2)} | {_fmt(p['length'], 1)} |")
    for r, points in runs.items():
        lines += ["", f"## Overoptimisation: {r}", "", "| snapshot | √KL | proxy | gold |", "|---|---|---|---|"]
        for p in points:
            lines.append(f"| {p['model']} | {max(p['kl'], 0) ** 0.5:.2f} | {_fmt(p['proxy'], 3)} | {_fmt(p['gold'])} |")
    write_text_atomic(out / "frontier.md", "\n".join(lines) + "\n")
    return finish(out, cfg, {
        "baseline": base, "methods": methods, "overoptimisation": runs,
        "best": {m: {**p, "gain": p["gold"] - base["gold"]} for m, p in best.items()},
        "every_method_best_above_start": all(p["gold"] > base["gold"] for p in best.values()),
    })
