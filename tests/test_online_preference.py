"""Online DPO and SPIN on a tiny model: pairs are ranked right, the toy reward goes up under online
DPO, SPIN raises the demonstrations' likelihood, and a run killed midway resumes to the same weights."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pytest
import torch

from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.rollout import SamplingSettings, sample

PROMPTS = ["the film was", "a dull and", "i loved the", "not the worst", "the acting was", "hello world",
           "the cast", "a plot that"]
DEMONSTRATION = " four. four. four."

# The toy reward: the share of the completion's characters that are the letter "e". A random tiny
# model emits "e" at some base rate; preferring the sample with more of it should teach more "e".
TOY_REWARD = """
def score(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]

def constant(prompts, completions):
    return [1.0] * len(completions)
"""
REWARD = {"type": "callable", "function": "toy_pref_reward:score"}


@pytest.fixture()
def setup(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "toy_pref_reward.py").write_text(textwrap.dedent(TOY_REWARD))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_pref_reward", None)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": p, "completion": DEMONSTRATION}) + "\n" for p in PROMPTS))
    return tmp_path, str(tiny_model_dir), str(prompts), str(sft)


def _train(**overrides):
    base = {"iterations": 20, "prompts_per_iteration": 8, "minibatch_size": 8, "lr": 3e-3, "save_every": 5,
            "seed": 0, "device": "cpu"}
    return {**base, **overrides}


def _log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _sample_reward(model_path: str, n: int = 8) -> float:
    """Mean toy reward of fresh samples: n per prompt, a fixed seed the training never used."""
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    ids = [[tokenizer.bos_token_id, *tokenizer(p, add_special_tokens=False)["input_ids"]]
           for p in PROMPTS for _ in range(n)]
    r = sample(model, ids, SamplingSettings(max_new_tokens=12, batch_size=64), pad_id=tokenizer.pad_token_id,
               eos_id=tokenizer.eos_token_id, seed=12345)
    texts = tokenizer.batch_decode(r.completion_ids, skip_special_tokens=True)
    return sum(t.count("e") / max(len(t), 1) for t in texts) / len(texts)


def _demonstration_logp(model_path: str, sft_path: str) -> float:
    """Mean summed log-prob of the demonstrations' completions under the model at `model_path`."""
    from alignlab.ops import sequence_logps, token_logps
    from alignlab.stages.online.preference import pair_tensors
    from alignlab.stages.online.spin import load_demonstrations

    tokenizer = load_tokenizer(model_path)
    demos, _ = load_demonstrations(sft_path, tokenizer, 64, 32)
    pairs = pair_tensors([d.prompt_ids for d in demos], [d.completion_ids for d in demos],
                         [d.completion_ids for d in demos], tokenizer.pad_token_id)
    ids, attn, mask = (pairs[f"pair_{k}"][:, 0] for k in ("input_ids", "attention_mask", "loss_mask"))
    with torch.no_grad():
        logps, m = token_logps(load_causal_lm(model_path), ids, attn, mask)
    return float(sequence_logps(logps, m).mean())


# --------------------------------------------------------------------------- pieces


def test_pairs_take_the_higher_score_as_chosen_and_drop_ties():
    from alignlab.stages.online.preference import rank_pairs

    scores = torch.tensor([1.0, 2.0, 3.0, 3.0, 5.0, 1.0, 0.50, 0.55])
    assert rank_pairs(scores) == ([1, 4, 7], [0, 5, 6])
    assert rank_pairs(scores, min_gap=0.1) == ([1, 4], [0, 5])  # a gap of 0.05 is too small to trust
    assert rank_pairs(torch.tensor([])) == ([], [])
    with pytest.raises(ValueError, match="pairs"):
        rank_pairs(torch.tensor([1.0, 2.0, 3.0]))


def test_pair_rows_survive_the_loops_shuffle_and_share_one_forward(tiny_model_dir):
    """Rows are whole pairs under run_online's row selection and trim; the loss at a fresh
    reference is ln 2 and its log-probs equal separate forwards of chosen and rejected."""
    from alignlab.ops import sequence_logps, token_logps
    from alignlab.stages.online.preference import (
        OnlineDPOConfig,
        flat_pairs,
        pair_loss_fn,
        pair_tensors,
    )
    from alignlab.train.online import _rows, _trim

    prompts, chosen, rejected = [[1, 5, 6], [1, 7]], [[8, 9, 2], [10, 2]], [[11, 2], [12, 13, 14, 15, 2]]
    exp = pair_tensors(prompts, chosen, rejected, pad_id=0)
    assert exp["pair_input_ids"].shape == (2, 2, 7)
    assert exp["pair_input_ids"][1, 1, :7].tolist() == [1, 7, 12, 13, 14, 15, 2]
    assert exp["pair_loss_mask"][0, 0].tolist() == [0, 0, 0, 1, 1, 1, 0]
    picked = _trim(_rows(exp, torch.tensor([1, 0])))
    assert torch.equal(picked["pair_input_ids"][0], exp["pair_input_ids"][1])  # the pair stayed together

    model = load_causal_lm(tiny_model_dir)
    flat = flat_pairs(exp)
    with torch.no_grad():
        logps, mask = token_logps(model, flat["input_ids"], flat["attention_mask"], flat["loss_mask"])
        seq = sequence_logps(logps, mask)
        alone = [sequence_logps(*token_logps(model, torch.tensor([p + c]), torch.ones(1, len(p + c), dtype=torch.long),
                                             torch.tensor([[0] * len(p) + [1] * len(c)])))
                 for p, c in zip(prompts + prompts, chosen + rejected)]
    assert torch.allclose(seq, torch.cat(alone), atol=1e-5)
    exp["ref_logps"] = torch.stack([seq[:2], seq[2:]], dim=1)
    cfg = OnlineDPOConfig(model=str(tiny_model_dir), prompts="unused", reward=REWARD)
    with torch.no_grad():
        loss, metrics = pair_loss_fn(model, cfg, 1.0, torch.device("cpu"))(exp)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-5)
    assert {"accuracy", "reward_margin"} <= set(metrics) and "loss" not in metrics  # run_online adds the loss


def test_spin_needs_no_reward_and_online_dpo_does(setup):
    from pydantic import ValidationError

    from alignlab.stages.online.preference import OnlineDPOConfig
    from alignlab.stages.online.spin import SPINConfig

    _, model, prompts, sft = setup
    assert SPINConfig(model=model, data=sft).reference == "previous"
    with pytest.raises(ValidationError, match="reward"):
        OnlineDPOConfig(model=model, prompts=prompts)
    with pytest.raises(ValidationError, match="simpo"):  # reference-free objectives have no place here
        OnlineDPOConfig(model=model, prompts=prompts, reward=REWARD, loss="simpo")
    with pytest.raises(ValidationError, match="extra"):
        SPINConfig(model=model, data=sft, reward=REWARD)


# --------------------------------------------------------------------------- end to end


def test_online_dpo_raises_the_toy_reward(setup):
    from alignlab.stages.online.preference import OnlineDPOConfig, run_online_dpo

    tmp, model, prompts, _ = setup
    cfg = OnlineDPOConfig(model=model, prompts=prompts, reward=REWARD, sampling={"max_new_tokens": 12},
                          train=_train(lr=1e-2))
    out = tmp / "online_dpo"
    metrics = run_online_dpo(cfg, out)
    before, after = _sample_reward(model), _sample_reward(str(out / "model"))
    assert after > before + 0.1, (before, after)  # measured: 0.02 → 0.19–0.34 over seeds
    log = _log(out)
    assert len(log) == 20 and metrics["iterations"] == 20
    for key in ("reward", "kl", "pairs", "pairs_dropped", "rollout/accuracy", "rollout/margin", "accuracy",
                "reward_margin", "loss"):
        assert key in log[-1], key
    assert all(0 < x["pairs"] + x["pairs_dropped"] <= 8 for x in log)
    assert abs(log[0]["kl"]) < 1e-3 and log[-1]["kl"] > 0.05  # starts at the reference, then moves away
    assert abs(log[0]["loss"] - math.log(2)) < 1e-3  # the first step is at a fresh reference
    assert json.loads((out / "metrics.json").read_text())["objective"] == "sigmoid"
    assert (out / "done.json").exists()


def test_when_every_pair_ties_nothing_is_learnt_and_nothing_breaks(setup):
    from alignlab.stages.online.preference import OnlineDPOConfig, run_online_dpo

    tmp, model, prompts, _ = setup
    constant = {"type": "callable", "function": "toy_pref_reward:constant"}
    cfg = OnlineDPOConfig(model=model, prompts=prompts, reward=constant,
                          sampling={"max_new_tokens": 6}, train=_train(iterations=2))
    run_online_dpo(cfg, tmp / "ties")
    assert [(x["pairs"], x["pairs_dropped"]) for x in _log(tmp / "ties")] == [(0, 8), (0, 8)]
    start, end = load_causal_lm(model).state_dict(), load_causal_lm(tmp / "ties" / "model").state_dict()
    assert all(torch.equal(start[k], end[k]) for k in start)


@pytest.mark.parametrize("reference", ["previous", "initial"])
def test_spin_raises_the_likelihood_of_the_demonstrations(setup, reference):
    from alignlab.stages.online.spin import SPINConfig, run_spin

    tmp, model, _, sft = setup
    cfg = SPINConfig(model=model, data=sft, reference=reference, sampling={"max_new_tokens": 12},
                     max_length=64, max_prompt_length=32, train=_train(iterations=8, save_every=4))
    out = tmp / f"spin-{reference}"
    run_spin(cfg, out)
    before, after = _demonstration_logp(model, sft), _demonstration_logp(str(out / "model"), sft)
    assert after > before + 10.0, (before, after)  # measured: about +17 nats over seeds, either reference
    log = _log(out)
    assert len(log) == 8 and all(x["pairs"] == 8 for x in log)
    if reference == "previous":  # one step per iteration, each against the policy that sampled: loss ln 2
        assert all(abs(x["loss"] - math.log(2)) < 1e-4 for x in log)
        assert log[-1]["ref/demo_logp"] > log[0]["ref/demo_logp"]
    else:
        assert all(math.isfinite(x["kl"]) for x in log)  # the samples' KL to the starting model


def test_a_killed_online_dpo_run_resumes_to_the_same_weights(setup, monkeypatch):
    import alignlab.stages.online.common as online_common
    from alignlab.stages.online.preference import OnlineDPOConfig, run_online_dpo

    tmp, model, prompts, _ = setup
    cfg = OnlineDPOConfig(model=model, prompts=prompts, reward=REWARD, sampling={"max_new_tokens": 8},
                          train=_train(iterations=6, save_every=2, prompts_per_iteration=4, minibatch_size=2))
    run_online_dpo(cfg, tmp / "whole")

    real, calls = online_common.sample_and_score, []

    def dies_in_iteration_six(*args, **kwargs):
        calls.append(kwargs["seed"])
        if len(calls) == 6:
            raise KeyboardInterrupt  # the kill lands after the checkpoint taken in iteration 5
        return real(*args, **kwargs)

    monkeypatch.setattr(online_common, "sample_and_score", dies_in_iteration_six)
    with pytest.raises(KeyboardInterrupt):
        run_online_dpo(cfg, tmp / "killed")
    assert not (tmp / "killed" / "model").exists()
    calls.clear()
    monkeypatch.setattr(online_common, "sample_and_score", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    run_online_dpo(cfg, tmp / "killed")
    # resumed at the checkpoint (iteration 5 re-collected with its seed), not from scratch; then the
    # final policy's samples for samples.jsonl
    assert calls == [4, 5, 6]
    whole = load_causal_lm(tmp / "whole" / "model").state_dict()
    again = load_causal_lm(tmp / "killed" / "model").state_dict()
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    assert len(_log(tmp / "killed")) == 6
    assert [x["pairs"] for x in _log(tmp / "killed")] == [x["pairs"] for x in _log(tmp / "whole")]
