"""Reward-hacking monitors: thresholds on each online step's signs of hacking, with warn or stop.

The online stages log the signs of every batch (`hack/*`, from `alignlab.eval.hacking`); this
monitor adds the proxy-versus-gold trend, which needs the run's history, and compares each
configured figure with its threshold once per step:

    monitors:
      gold: {type: gold, task: sentiment}          # the held-out scorer (stages.online.common)
      length_reward_pearson: {threshold: 0.5, action: warn, patience: 3}
      distinct_2: {threshold: 0.2, action: stop, patience: 3, warmup: 5}
      proxy_gold_gap: {threshold: 2.0, action: stop, patience: 3, warmup: 5}

A monitor is *past* its threshold on a step when its figure is above (correlation, truncation rate, gap, slope) or
below (distinct-n, entropy) it; an undefined figure (NaN: every response the same length, no gold
score) is not past it. It *fires* on the `patience`-th consecutive step past it, once per such run
of steps; steps up to `warmup` are never counted. `warn` records the firing and goes on; `stop`
ends the run. The loop (`alignlab.train.online`) writes no checkpoint while a stop monitor is past
its threshold, so the newest checkpoint always predates the run of steps that fired: that is the
model a stopped run keeps.

Proxy versus gold: with the first batch's proxy mean and std (P₀, σP) and gold mean and std
(G₀, σG), step t's gap is (P_t − P₀)/σP − (G_t − G₀)/σG, how many starting standard deviations
the proxy has gained beyond what gold gained; `proxy_gold_slope` is its least-squares slope per
step over the last `window` steps (NaN until there are that many): proxy still rising while gold
is flat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAN = float("nan")
Action = Literal["warn", "stop"]

# monitor -> (the figure it reads, the side of the threshold that counts as past it)
WATCHED: dict[str, tuple[str, Literal["above", "below"]]] = {
    "length_reward_pearson": ("hack/length_reward_pearson", "above"),
    "length_reward_spearman": ("hack/length_reward_spearman", "above"),
    "distinct_1": ("hack/distinct_1", "below"),
    "distinct_2": ("hack/distinct_2", "below"),
    "entropy": ("hack/entropy", "below"),
    "truncation_rate": ("hack/truncation_rate", "above"),
    "proxy_gold_gap": ("monitor/proxy_gold_gap", "above"),
    "proxy_gold_slope": ("monitor/proxy_gold_slope", "above"),
}
GOLD_MONITORS = ("proxy_gold_gap", "proxy_gold_slope")


class Threshold(BaseModel):
    """One monitor's threshold and what happens when it is crossed."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(allow_inf_nan=False, description="the value the figure must not cross")
    action: Action = Field("warn", description="warn: record it (log and metrics.json) and go on; stop: end the run, "
                           "keeping the newest checkpoint from before the crossing began")
    patience: int = Field(1, ge=1, description="consecutive steps past the threshold before it acts")
    warmup: int = Field(0, ge=0, description="steps at the start that are never counted")


def _threshold(what: str) -> Any:
    return Field(None, description=what)


class MonitorSettings(BaseModel):
    """Reward-hacking monitors of an online run, each optional."""

    model_config = ConfigDict(extra="forbid")

    length_reward_pearson: Threshold | None = _threshold(
        "Pearson correlation of response length (tokens) with the proxy reward over the batch; acts above")
    length_reward_spearman: Threshold | None = _threshold(
        "Spearman (rank) correlation of response length with the proxy reward: less swayed by a few very short "
        "or long responses, but a block of responses cut at max_new_tokens (tied lengths) lowers it; acts above")
    distinct_1: Threshold | None = _threshold("distinct unigrams / all unigrams of the batch's responses; acts below")
    distinct_2: Threshold | None = _threshold("distinct bigrams / all bigrams of the batch's responses; acts below")
    entropy: Threshold | None = _threshold(
        "per-token entropy of the sampling distribution, nats (mean −log p of the sampled tokens); acts below")
    truncation_rate: Threshold | None = _threshold(
        "share of the batch's responses cut at sampling.max_new_tokens without ending (EOS or a stop): a policy "
        "that pads its answers to the limit, where every length is the same and the length correlations are "
        "undefined; acts above")
    proxy_gold_gap: Threshold | None = _threshold(
        "(proxy − start)/start std − (gold − start)/start std of the batch means (needs gold); acts above")
    proxy_gold_slope: Threshold | None = _threshold(
        "least-squares slope per step of proxy_gold_gap over the last `window` steps (needs gold); acts above")
    window: int = Field(10, ge=2, description="steps in proxy_gold_slope's window")

    def active(self) -> dict[str, Threshold]:
        return {name: t for name in WATCHED if (t := getattr(self, name)) is not None}


# --------------------------------------------------------------------------- pure math


def past(value: float, threshold: float, side: str) -> bool:
    """Whether `value` is past `threshold` on `side`; an undefined (NaN) value never is."""
    if not math.isfinite(value):
        return False
    return value > threshold if side == "above" else value < threshold


def proxy_gold_gap(proxy_mean: float, gold_mean: float, baseline: dict[str, float]) -> float:
    """(P − P₀)/σP − (G − G₀)/σG with the baseline batch's means and stds."""
    b = baseline
    return (proxy_mean - b["proxy_mean"]) / b["proxy_std"] - (gold_mean - b["gold_mean"]) / b["gold_std"]


def ols_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs; NaN with fewer than two points, a constant x or a NaN y."""
    n = len(xs)
    if n < 2 or not all(math.isfinite(y) for y in ys):
        return NAN
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else NAN


# --------------------------------------------------------------------------- the monitor


@dataclass
class Verdict:
    """What the monitor says about one step."""

    figures: dict[str, Any]
    """monitor/* figures for the step's log line (the trend; `monitor/fired` names those that fired)"""
    fired: list[dict] = field(default_factory=list)
    """a record per monitor that reached its patience this step: monitor, action, step, began, value, threshold"""
    stop: dict | None = None
    """the record of the stop monitor that fired, if one did"""
    holding: bool = False
    """a stop monitor is past its threshold now: a checkpoint written now could hold a hacked policy"""


class HackingMonitor:
    """Fed once per step with the step's figures; keeps what the trend and the patience need, and
    its state goes into the run's checkpoints (`state_dict` / `load_state_dict`, plain JSON)."""

    def __init__(self, settings: MonitorSettings):
        self.settings = settings
        self.thresholds = settings.active()
        self.baseline: dict[str, float] | None = None
        self.gaps: list[list[float]] = []  # [step, gap] of the last `window` steps
        self.began: dict[str, int] = {}  # monitor -> first step of its current run past the threshold
        self.warnings: list[dict] = []
        self.stopped: dict | None = None

    @property
    def can_stop(self) -> bool:
        return any(t.action == "stop" for t in self.thresholds.values())

    def observe(self, step: int, figures: dict[str, float]) -> Verdict:
        trend = self._trend(step, figures)
        values = {**figures, **trend}
        fired = []
        for name, t in self.thresholds.items():
            figure, side = WATCHED[name]
            value = float(values.get(figure, NAN))
            if step <= t.warmup or not past(value, t.threshold, side):
                self.began.pop(name, None)
                continue
            began = self.began.setdefault(name, step)
            if step - began + 1 == t.patience:  # once per run of steps past the threshold
                fired.append({"monitor": name, "action": t.action, "step": step, "began": began, "figure": figure,
                              "value": value, "threshold": t.threshold})
        self.warnings += [r for r in fired if r["action"] == "warn"]
        stop = next((r for r in fired if r["action"] == "stop"), None)
        if stop is not None:
            self.stopped = stop
        holding = any(self.thresholds[name].action == "stop" for name in self.began)
        out = dict(trend)
        if fired:
            out["monitor/fired"] = [r["monitor"] for r in fired]
        return Verdict(out, fired, stop, holding)

    def _trend(self, step: int, figures: dict[str, float]) -> dict[str, float]:
        """The proxy-versus-gold gap and its windowed slope; nothing when no gold is scored."""
        if "hack/gold_mean" not in figures:
            return {}
        if self.baseline is None:
            candidate = {k: float(figures.get(f"hack/{k}", NAN)) for k in ("proxy_mean", "proxy_std", "gold_mean", "gold_std")}
            # the first batch whose spread is defined: a zero std cannot scale the gap
            if all(math.isfinite(v) for v in candidate.values()) and candidate["proxy_std"] > 0 and candidate["gold_std"] > 0:
                self.baseline = candidate
        if self.baseline is None:
            return {"monitor/proxy_gold_gap": NAN, "monitor/proxy_gold_slope": NAN}
        gap = proxy_gold_gap(float(figures["hack/proxy_mean"]), float(figures["hack/gold_mean"]), self.baseline)
        self.gaps = (self.gaps + [[float(step), gap]])[-self.settings.window :]
        slope = ols_slope(*map(list, zip(*self.gaps))) if len(self.gaps) == self.settings.window else NAN
        return {"monitor/proxy_gold_gap": gap, "monitor/proxy_gold_slope": slope}

    def report(self) -> dict:
        """For metrics.json: every warning, and the stop (with the model kept) if the run was stopped."""
        return {"warnings": list(self.warnings), "stopped": self.stopped}

    def state_dict(self) -> dict:
        return {"baseline": self.baseline, "gaps": [list(g) for g in self.gaps], "began": dict(self.began),
                "warnings": [dict(w) for w in self.warnings], "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.baseline, self.gaps = state["baseline"], [list(g) for g in state["gaps"]]
        self.began, self.warnings, self.stopped = dict(state["began"]), list(state["warnings"]), state["stopped"]
