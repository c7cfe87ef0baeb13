"""Reward-hacking monitors: the batch statistics and the trend against closed forms, the thresholds'
patience and warm-up on hand-made sequences, the loop's stop (the model kept is the one from before
the crossing began; a rerun does not train past the stop; a kill mid-crossing resumes to the same
stop), and end to end on a tiny model: a proxy that pays for length trips the length monitor, a
proxy that does not leaves it quiet."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pytest
import torch
from pydantic import ValidationError

from alignlab.eval.hacking import batch_signs, mean_std, pearson, ranks, spearman, token_entropy
from alignlab.train.monitors import HackingMonitor, MonitorSettings, ols_slope, proxy_gold_gap
from alignlab.train.online import OnlineSettings, OnlineStage, run_online

LN2 = math.log(2)


# --------------------------------------------------------------------------- batch statistics


def test_correlations_match_their_closed_forms():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    # x = 1, 2, 3; y = 1, 3, 2: sxy = 1, sxx = syy = 2, r = 1/2
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # monotone but not linear: Spearman 1, Pearson below it
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 8, 27, 64]) < 0.99
    assert ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    # ties: ranks x = 1, 2.5, 2.5, 4 against y = 1, 2, 3, 4: sxy = 4.5, sxx = 4.5, syy = 5
    assert spearman([10, 20, 20, 30], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(pearson([5, 5, 5], [1, 2, 3]))  # every response the same length: undefined
    assert math.isnan(pearson([1], [2]))


def test_entropy_distinct_and_means_of_a_hand_made_batch():
    # tokens drawn at p = 1/2, 1/2 and 1/4: mean -log p = (ln2 + ln2 + 2 ln2) / 3
    assert token_entropy([[math.log(0.5), math.log(0.5)], [math.log(0.25)]]) == pytest.approx(4 * LN2 / 3)
    signs = batch_signs(lengths=[4, 2], proxy=[3.0, 1.0], texts=["a b a b", "a b"],
                        logps=[[math.log(0.5)] * 4, [math.log(0.5)] * 2], gold=[1.0, float("nan")])
    assert signs["hack/distinct_1"] == pytest.approx(2 / 6)  # a, b out of 6 words
    assert signs["hack/distinct_2"] == pytest.approx(2 / 4)  # (a b), (b a) out of 4 bigrams
    assert signs["hack/entropy"] == pytest.approx(LN2)
    assert signs["hack/length_reward_pearson"] == pytest.approx(1.0)
    assert (signs["hack/proxy_mean"], signs["hack/proxy_std"]) == (2.0, 1.0)
    assert (signs["hack/gold_mean"], signs["hack/gold_std"]) == (1.0, 0.0)  # the unscored sample is left out
    assert mean_std([1.0, float("nan"), 3.0]) == (2.0, 1.0)
    assert "hack/gold_mean" not in batch_signs([1], [0.0], ["a"], [[0.0]])
    assert batch_signs([3, 3, 1], [0.0] * 3, ["a"] * 3, [[0.0]] * 3,
                       truncated=[True, False, False])["hack/truncation_rate"] == pytest.approx(1 / 3)
    assert "hack/truncation_rate" not in signs  # not asked for: not reported
    empty = batch_signs([], [], [], [], truncated=[])  # every sample dropped: nothing is defined, so nothing is past a threshold
    assert all(math.isnan(v) for v in empty.values())


def test_the_proxy_gold_trend_matches_its_closed_form():
    baseline = {"proxy_mean": 1.0, "proxy_std": 2.0, "gold_mean": 0.0, "gold_std": 0.5}
    assert proxy_gold_gap(5.0, 0.5, baseline) == pytest.approx((5 - 1) / 2 - (0.5 - 0) / 0.5)
    assert ols_slope([1, 2, 3, 4], [0, 1, 2, 3]) == pytest.approx(1.0)
    assert ols_slope([1, 2, 3], [1, 1, 4]) == pytest.approx(1.5)  # sxy 3 / sxx 2
    assert math.isnan(ols_slope([1], [1]))

    monitor = HackingMonitor(MonitorSettings(window=3, proxy_gold_gap={"threshold": 2.5}))
    steps = [(1.0, 2.0, 0.0, 0.5), (5.0, 2.0, 0.5, 0.5), (9.0, 2.0, 0.5, 0.5)]  # proxy mean/std, gold mean/std
    out = [monitor.observe(i + 1, {"hack/proxy_mean": p, "hack/proxy_std": ps, "hack/gold_mean": g,
                                   "hack/gold_std": gs}) for i, (p, ps, g, gs) in enumerate(steps)]
    # the first batch is the baseline: gaps 0, (4/2 - 0.5/0.5) = 1, (8/2 - 1) = 3; slope of 0, 1, 3 = 1.5
    assert [v.figures["monitor/proxy_gold_gap"] for v in out] == pytest.approx([0.0, 1.0, 3.0])
    assert math.isnan(out[1].figures["monitor/proxy_gold_slope"])  # fewer than `window` steps yet
    assert out[2].figures["monitor/proxy_gold_slope"] == pytest.approx(1.5)
    assert [r["step"] for r in monitor.warnings] == [3]


# --------------------------------------------------------------------------- thresholds


def _feed(monitor: HackingMonitor, figure: str, values: list[float]):
    return [monitor.observe(step, {figure: v}) for step, v in enumerate(values, 1)]


def test_patience_and_warmup_fire_once_per_run_of_steps_past_the_threshold():
    monitor = HackingMonitor(MonitorSettings(length_reward_spearman={"threshold": 0.5, "patience": 2, "warmup": 1}))
    # step 1 is warm-up; 2 past then 3 not (reset); 4, 5 past: fires at 5; 6 still past (no second
    # warning); 7 resets; NaN (undefined) is never past; 9, 10 past: fires at 10
    verdicts = _feed(monitor, "hack/length_reward_spearman", [0.9, 0.6, 0.4, 0.7, 0.8, 0.9, 0.2, float("nan"), 0.6, 0.7])
    assert [(r["step"], r["began"]) for r in monitor.warnings] == [(5, 4), (10, 9)]
    assert [i + 1 for i, v in enumerate(verdicts) if v.fired] == [5, 10]
    assert verdicts[4].figures["monitor/fired"] == ["length_reward_spearman"]
    assert all(v.stop is None and not v.holding for v in verdicts)  # warn monitors never hold checkpoints
    assert monitor.report() == {"warnings": monitor.warnings, "stopped": None}


def test_a_stop_monitor_holds_checkpoints_while_past_and_stops_at_its_patience():
    monitor = HackingMonitor(MonitorSettings(distinct_2={"threshold": 0.3, "action": "stop", "patience": 2},
                                             entropy={"threshold": 1.0}))
    verdicts = _feed(monitor, "hack/distinct_2", [0.5, 0.2, 0.6, 0.25, 0.1])
    assert [v.holding for v in verdicts] == [False, True, False, True, True]
    assert [v.stop is not None for v in verdicts] == [False] * 4 + [True]
    assert monitor.stopped == {"monitor": "distinct_2", "action": "stop", "step": 5, "began": 4,
                               "figure": "hack/distinct_2", "value": 0.1, "threshold": 0.3}
    assert monitor.warnings == []  # entropy's figure is missing: undefined, never past


def test_the_monitor_state_resumes_exactly_through_json():
    settings = MonitorSettings(window=2, length_reward_spearman={"threshold": 0.5, "patience": 3},
                               proxy_gold_slope={"threshold": 0.1, "patience": 2})
    steps = [{"hack/length_reward_spearman": 0.2 + 0.1 * i, "hack/proxy_mean": 1.0 + i, "hack/proxy_std": 1.0,
              "hack/gold_mean": 0.5, "hack/gold_std": 0.5} for i in range(8)]
    whole = HackingMonitor(settings)
    expected = [whole.observe(i + 1, s).figures for i, s in enumerate(steps)]
    first = HackingMonitor(settings)
    for i, s in enumerate(steps[:4]):
        first.observe(i + 1, s)
    resumed = HackingMonitor(settings)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [resumed.observe(i + 5, s).figures for i, s in enumerate(steps[4:])] == expected[4:]
    assert resumed.report() == whole.report() and len(whole.warnings) == 2


def test_monitor_settings_are_checked_and_name_the_field():
    from alignlab.stages.online.common import OnlineMonitors

    with pytest.raises(ValidationError, match="monitors.proxy_gold_gap"):
        OnlineMonitors(proxy_gold_gap={"threshold": 1.0})
    with pytest.raises(ValidationError, match="treshold"):
        OnlineMonitors(entropy={"treshold": 1.0})
    with pytest.raises(ValidationError, match="patience"):
        OnlineMonitors(entropy={"threshold": 1.0, "patience": 0})
    with pytest.raises(ValidationError, match="action"):
        OnlineMonitors(entropy={"threshold": 1.0, "action": "halt"})
    assert OnlineMonitors(gold={"type": "gold", "task": "sentiment"}, proxy_gold_gap={"threshold": 1.0}).window == 10


# --------------------------------------------------------------------------- the loop (a scripted stage)

# distinct-2 of each step's rollouts; the stop monitor acts below 0.3 after 2 steps
SCRIPT = [0.5, 0.5, 0.5, 0.5, 0.2, 0.5, 0.5, 0.2, 0.2, 0.5, 0.5, 0.5]


def _scripted_run(out, action: str = "stop", dies_at: int | None = None, keep_checkpoints: bool = False):
    """A linear model trained by the loop; its rollout figures come from SCRIPT. Returns (result,
    the weights after each update, the iterations collected)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    weights, collected = {}, []

    def collect(iteration):
        if iteration == dies_at:
            raise KeyboardInterrupt
        collected.append(iteration)
        return {"x": torch.randn(4, 2, generator=torch.Generator().manual_seed(iteration))}, {
            "reward": 0.0, "hack/distinct_2": SCRIPT[iteration]}

    def after(iteration, figures):
        weights[iteration + 1] = model.weight.detach().clone()  # the policy after iteration+1 updates
        return {}

    settings = MonitorSettings(distinct_2={"threshold": 0.3, "action": action, "patience": 2})
    stage = OnlineStage(collect, lambda b: ((model(b["x"]) - 1).pow(2).mean(), {}), after_iteration=after,
                        monitor=HackingMonitor(settings))
    train = OnlineSettings(iterations=len(SCRIPT), prompts_per_iteration=4, minibatch_size=4, lr=0.1, save_every=2,
                           device="cpu", keep_checkpoints=keep_checkpoints)
    result = run_online(model, stage, train, out, device=torch.device("cpu"), expected_samples=4, name="toy")
    return result, model, weights, collected


def _lines(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_a_stop_keeps_the_policy_from_before_the_crossing_and_a_rerun_does_not_go_on(tmp_path, caplog):
    result, model, weights, collected = _scripted_run(tmp_path)
    # step 5 crossed alone (reset at 6); steps 8 and 9 fire at 9 (iteration 8), before its update.
    # Checkpoints: iterations 0, 2, 6 (4 was skipped: step 5 was past); 8 would be held anyway.
    stopped = result["monitors"]["stopped"]
    assert (stopped["monitor"], stopped["step"], stopped["began"]) == ("distinct_2", 9, 8)
    assert stopped["kept_iteration"] == 6 and stopped["kept_checkpoint"] == "step-000006"
    assert collected == list(range(9))
    assert torch.equal(model.weight, weights[6]) and not torch.equal(model.weight, weights[8])
    log = _lines(tmp_path)
    assert [x["step"] for x in log] == list(range(1, 10))
    assert log[-1]["monitor/fired"] == ["distinct_2"] and "loss" not in log[-1]  # the stop step: no update
    assert result["train"]["step"] == 8  # the last update's figures
    meta = json.loads((tmp_path / "checkpoints" / "step-000009" / "meta.json").read_text())
    assert meta["finished"] and meta["monitor"]["stopped"]["kept_iteration"] == 6

    # the same stage run again finds the finished checkpoint: nothing is collected or trained, and it says so
    caplog.clear()
    again, model2, _, collected2 = _scripted_run(tmp_path)
    assert collected2 == [] and again["monitors"] == result["monitors"]
    assert "stopped by monitor distinct_2 at step 9" in caplog.text and "not trained past the stop" in caplog.text
    assert torch.equal(model2.weight, weights[6])
    assert _lines(tmp_path) == log


def test_a_run_killed_while_past_the_threshold_resumes_to_the_same_stop(tmp_path):
    whole, model, _, _ = _scripted_run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _scripted_run(tmp_path / "killed", dies_at=8)  # step 8 was past: no checkpoint after iteration 6
    resumed, model2, _, collected = _scripted_run(tmp_path / "killed")
    assert collected == [6, 7, 8]  # from the checkpoint of iteration 6, the monitor as it was there
    assert resumed["monitors"] == whole["monitors"]
    assert torch.equal(model.weight, model2.weight)


def test_a_warn_monitor_records_and_goes_on(tmp_path):
    result, _, _, collected = _scripted_run(tmp_path, action="warn")
    assert collected == list(range(len(SCRIPT))) and result["monitors"]["stopped"] is None
    assert [(w["step"], w["began"]) for w in result["monitors"]["warnings"]] == [(9, 8)]
    assert [x["step"] for x in _lines(tmp_path) if "monitor/fired" in x] == [9]


# --------------------------------------------------------------------------- end to end, tiny model

REWARDS = """
def length(prompts, completions):  # a proxy that pays for length
    return [float(len(c)) for c in completions]

def letter_e(prompts, completions):  # the held-out "gold" of the length run
    return [c.count("e") / max(len(c), 1) for c in completions]

def noise(prompts, completions):  # a proxy that does not pay for length: a checksum of the text
    import zlib
    return [zlib.crc32(c.encode()) % 1000 / 1000 for c in completions]
"""
PROMPTS = ["the film was", "a dull and", "i loved the", "not the worst", "the acting was", "hello world",
           "the cast", "a plot that"]


@pytest.fixture(scope="module")
def eos_prone_model(tmp_path_factory, tiny_model_dir):
    """The tiny model with EOS likely enough that most first responses end early, so response
    lengths vary (a random tiny model almost never ends one; a length monitor needs them to differ)."""
    from alignlab.models import load_causal_lm, load_tokenizer

    out = tmp_path_factory.mktemp("eos-prone")
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    with torch.no_grad():  # EOS's (tied) embedding reads one hidden dimension, lifted by the final norm's bias
        model.transformer.ln_f.bias[0] = 3.0
        row = model.get_output_embeddings().weight[tokenizer.eos_token_id]
        row.zero_()
        row[0] = 1.0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture()
def toy_files(tmp_path, monkeypatch):
    """The toy rewards (importable as monitor_rewards) and the prompts file, in tmp_path."""
    (tmp_path / "monitor_rewards.py").write_text(textwrap.dedent(REWARDS))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("monitor_rewards", None)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return tmp_path, str(prompts)


@pytest.fixture()
def toy(toy_files, eos_prone_model):
    tmp_path, prompts = toy_files
    return tmp_path, eos_prone_model, prompts


def _grpo(model, prompts, reward: str, monitors: dict, iterations: int = 8):
    from alignlab.stages.online.grpo import GRPOConfig

    return GRPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": f"monitor_rewards:{reward}"},
                      samples_per_prompt=4, beta=0.0, track_kl=False, sampling={"max_new_tokens": 24},
                      monitors=monitors,
                      train={"iterations": iterations, "prompts_per_iteration": 8, "minibatch_size": 32, "lr": 1e-3,
                             "save_every": 1, "snapshot_every": 1, "seed": 0, "device": "cpu", "log_samples": 0})


LENGTH_STOP = {"length_reward_pearson": {"threshold": 0.5, "action": "stop", "patience": 2, "warmup": 3},
               "gold": {"type": "callable", "function": "monitor_rewards:letter_e"}}


def test_a_proxy_that_pays_for_length_trips_the_length_monitor(toy):
    from alignlab.models import load_causal_lm
    from alignlab.stages.online.grpo import run_grpo

    tmp, model, prompts = toy
    out = tmp / "length"
    metrics = run_grpo(_grpo(model, prompts, "length", LENGTH_STOP), out)
    log = _lines(out)
    assert all(x["hack/length_reward_pearson"] > 0.5 for x in log)  # the proxy is length itself
    assert all("hack/gold_mean" in x and "monitor/proxy_gold_gap" in x for x in log)
    # warm-up to step 3; past at 4 and 5: stops at 5 and keeps the policy after 2 iterations,
    # whose samples (step 3) were the last checked before the crossing began
    stopped = metrics["monitors"]["stopped"]
    assert (stopped["monitor"], stopped["step"], stopped["began"], stopped["kept_iteration"]) == (
        "length_reward_pearson", 5, 4, 2)
    assert [x["step"] for x in log] == [1, 2, 3, 4, 5] and "loss" not in log[-1]
    kept = load_causal_lm(out / "model").state_dict()
    for snapshot, same in (("iter-00002", True), ("iter-00004", False)):
        other = load_causal_lm(out / "snapshots" / snapshot).state_dict()
        assert all(torch.equal(kept[k], other[k]) for k in kept) == same, snapshot
    assert json.loads((out / "metrics.json").read_text())["monitors"]["stopped"]["step"] == 5


def test_a_proxy_that_does_not_pay_for_length_leaves_the_monitor_quiet(toy):
    from alignlab.stages.online.grpo import run_grpo

    tmp, model, prompts = toy
    out = tmp / "noise"
    metrics = run_grpo(_grpo(model, prompts, "noise", LENGTH_STOP), out)
    log = _lines(out)
    assert metrics["monitors"] == {"warnings": [], "stopped": None} and len(log) == 8
    pearson_r = [x["hack/length_reward_pearson"] for x in log]
    assert all(abs(r) < 0.5 for r in pearson_r) and len(set(pearson_r)) == 8  # defined: lengths still vary


@pytest.mark.parametrize("kind", ["ppo", "rloo", "reinforce_pp", "online_dpo"])
def test_every_reward_driven_online_stage_feeds_the_monitor(toy, kind):
    from alignlab.stages import STAGES

    tmp, model, prompts = toy
    config_cls, run = STAGES[kind].load()
    extra = {"samples_per_prompt": 2} if kind in ("rloo", "reinforce_pp") else {}
    cfg = config_cls(model=model, prompts=prompts, reward={"type": "callable", "function": "monitor_rewards:length"},
                     sampling={"max_new_tokens": 6}, **extra,
                     monitors={"distinct_1": {"threshold": 2.0}},  # distinct-n is at most 1: past at once
                     train={"iterations": 1, "prompts_per_iteration": 4, "minibatch_size": 8, "update_epochs": 1,
                            "device": "cpu", "log_samples": 0})
    metrics = run(cfg, tmp / kind)
    assert [(w["monitor"], w["step"]) for w in metrics["monitors"]["warnings"]] == [("distinct_1", 1)]
    assert {"hack/entropy", "hack/distinct_2", "hack/length_reward_spearman"} <= set(_lines(tmp / kind)[0])


def test_the_truncation_monitor_sees_responses_cut_at_the_limit(toy_files, tiny_model_dir):
    # the tiny random model almost never draws EOS: nearly every response runs to max_new_tokens
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    tmp_path, prompts = toy_files
    cfg = GRPOConfig(model=str(tiny_model_dir), prompts=prompts,
                     reward={"type": "callable", "function": "monitor_rewards:length"}, samples_per_prompt=2,
                     sampling={"max_new_tokens": 6}, monitors={"truncation_rate": {"threshold": 0.5}},
                     train={"iterations": 2, "prompts_per_iteration": 4, "minibatch_size": 8, "device": "cpu",
                            "log_samples": 0})
    metrics = run_grpo(cfg, tmp_path / "run")
    log = _lines(tmp_path / "run")
    assert all(x["hack/truncation_rate"] == pytest.approx(1 - x["eos_rate"]) for x in log)  # no EOS at the last token
    assert log[0]["hack/truncation_rate"] > 0.5
    assert metrics["monitors"]["warnings"][0]["monitor"] == "truncation_rate"
