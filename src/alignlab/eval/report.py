"""A markdown report with a plot comparing models on gold reward, KL, length (and RM accuracy)."""

from __future__ import annotations

import math
from pathlib import Path

from alignlab.eval.figures import plt, save_figure

PANELS = [("gold", "gold reward"), ("proxy", "proxy (reward model)"), ("kl", "KL to reference (nats)"),
          ("length", "response length (tokens)")]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def plot_models(models: dict[str, dict], path: Path) -> Path:
    panels = [(k, label) for k, label in PANELS if any(f"{k}_mean" in m for m in models.values())]
    width = max(3.2, 0.45 * len(models) + 1.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.4), squeeze=False)
    names = list(models)
    for ax, (key, label) in zip(axes[0], panels):
        means = [models[n].get(f"{key}_mean", float("nan")) for n in names]
        errs = [models[n].get(f"{key}_se", 0.0) or 0.0 for n in names]
        ax.bar(names, means, yerr=[0 if math.isnan(e) else e for e in errs], capsize=4,
               color=[plt.cm.tab10(i % 10) for i in range(len(names))])
        ax.tick_params(axis="x", labelrotation=45 if len(names) > 3 else 0, labelsize=8)
        ax.set_title(label, fontsize=10)
        ax.axhline(0, color="black", linewidth=0.6)
    return save_figure(fig, path)


def _share(p: dict | None) -> str:
    """A proportion {rate, low, high, n} as "0.412 [0.301, 0.532] n=64"."""
    if not p:
        return "–"
    return f"{_fmt(p.get('rate'))} [{_fmt(p.get('low'))}, {_fmt(p.get('high'))}] n={p.get('n')}"


def probe_figures(metrics: dict) -> dict[str, str]:
    """A probe stage's headline figures (see `alignlab.stages.evaluation.probe`), one row each, every
    share with its 95% Wilson interval: a table for `write_report`'s `extra`."""
    rows: dict[str, str] = {}
    syc = metrics.get("sycophancy")
    if syc:
        rows["sycophancy questions"] = f"{syc['questions']} ({syc['source']}, {syc['format']} format)"
        for key, label in (("accuracy_before", "accuracy"), ("accuracy_after", "accuracy after 'are you sure?'"),
                           ("right_to_wrong", "right → wrong when challenged"),
                           ("wrong_to_right", "wrong → right when challenged")):
            rows[label] = _share(syc.get(key))
        rows["right → wrong when asked to repeat (control)"] = _share(syc.get("control", {}).get("right_to_wrong"))
        belief = syc.get("belief")
        if belief:
            rows["agrees with a stated wrong answer"] = _share(belief.get("agreement"))
            rows["gives that answer unprompted"] = _share(belief.get("baseline_agreement"))
            rows["accuracy with the wrong belief stated"] = _share(belief.get("accuracy"))
    ref = metrics.get("refusal")
    if ref:
        rows["refuses harmful prompts"] = _share(ref.get("harmful_refusal"))
        rows["refuses safe look-alikes (over-refusal)"] = _share(ref.get("contrast_refusal"))
        rows["refusal detector"] = ref.get("detector", "–")
    return rows


def write_report(title: str, models: dict[str, dict], extra: dict[str, dict], out: Path,
                 baseline: str | None = None) -> Path:
    """report.md + report.png under `out`. `extra`: other stages' figures shown as a table."""
    plot = plot_models(models, out / "report.png")
    lines = [f"# {title}", "", f"![comparison]({plot.name})", "",
             "| model | gold reward | ± se | proxy reward | KL to ref | length | distinct-1 | distinct-2 | stage wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        lines.append(
            f"| {name} | {_fmt(m.get('gold_mean'))} | {_fmt(m.get('gold_se'))} | {_fmt(m.get('proxy_mean'))} "
            f"| {_fmt(m.get('kl_mean'), 2)} | {_fmt(m.get('length_mean'), 1)} | {_fmt(m.get('distinct_1'))} "
            f"| {_fmt(m.get('distinct_2'))} | {_fmt(m.get('wall_seconds'), 1)} |"
        )
    if baseline and baseline in models:
        base = models[baseline].get("gold_mean")
        for name, m in models.items():
            if name != baseline and base is not None and "gold_mean" in m:
                lines += ["", f"Gold reward of **{name}** minus **{baseline}**: {m['gold_mean'] - base:+.3f}"]
    for section, figures in extra.items():
        lines += ["", f"## {section}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v) if isinstance(v, float) else v} |" for k, v in figures.items()]
    path = out / "report.md"
    from alignlab.files import write_text_atomic

    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
