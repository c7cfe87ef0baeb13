"""Turn an evaluate stage's figures (and other stages' metrics) into report.md + report.png."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alignlab.eval.report import probe_figures, write_report
from alignlab.stages.common import StageConfig, finish, stage_metrics, wall_time


class ReportConfig(StageConfig):
    evaluate: str = Field(description="directory of an evaluate stage")
    reward_model: str | None = Field(None, description="directory of a reward_model stage")
    baseline: str | None = Field(None, description="model the others are compared to")
    probes: list[str] = Field(default_factory=list, description="directories of probe stages, a section each")
    title: str = "alignlab report"


def headline(summary: dict) -> list[str]:
    """The report's result in a few terminal lines: each model's gold gain over the baseline with its
    KL, the reward model's held-out accuracy, and where report.md is."""
    models = summary.get("models", {})
    base = summary.get("baseline")
    lines = []
    for name, gain in summary.get("gold_gain_over_baseline", {}).items() if base in models else ():
        m = models[name]
        kl = f", KL {m['kl_mean']:.2f} nats" if m.get("kl_mean") is not None else ""
        lines.append(f"{name}: gold reward {gain:+.3f} over {base} "
                     f"({models[base]['gold_mean']:.3f} -> {m['gold_mean']:.3f}){kl}")
    accuracy = summary.get("reward model", {}).get("held-out pairwise accuracy")
    if accuracy is not None:
        pairs = summary["reward model"].get("held-out pairs")
        lines.append(f"reward model: held-out pairwise accuracy {accuracy:.3f}"
                     + (f" on {pairs} pairs" if pairs else ""))
    lines.append(f"report: {summary['report']}")
    return lines


def run(cfg: ReportConfig, out: Path) -> dict:
    evaluate = stage_metrics(cfg.evaluate)
    models = evaluate["models"]
    for name, path in evaluate.get("model_paths", {}).items():
        seconds = wall_time(Path(path).parent)  # a model lives in <stage>/model
        if name in models and seconds is not None:
            models[name]["wall_seconds"] = seconds
    extra = {}
    if cfg.reward_model:
        rm = stage_metrics(cfg.reward_model)
        extra["reward model"] = {"held-out pairwise accuracy": rm.get("eval", {}).get("accuracy"),
                                 "held-out pairs": rm.get("eval_pairs"), "train pairs": rm.get("train_pairs")}
    for probe in cfg.probes:
        figures = stage_metrics(probe)
        extra[f"probes of {figures.get('model')} ({probe})"] = probe_figures(figures)
    path = write_report(cfg.title, models, extra, out, baseline=cfg.baseline)
    summary = {"report": str(path), "models": models, "baseline": cfg.baseline, **extra}
    if cfg.baseline in models:
        base = models[cfg.baseline].get("gold_mean")
        summary["gold_gain_over_baseline"] = {
            n: m["gold_mean"] - base for n, m in models.items() if n != cfg.baseline and "gold_mean" in m
        }
    return finish(out, cfg, summary)
