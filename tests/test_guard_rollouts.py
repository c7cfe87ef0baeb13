"""The guard in RL rollouts: blocked prompts are dropped with their group and never scored, halted
rollouts end at the flagged token and take `halted_reward`, and a GRPO run behind a streaming
classifier learns to stop producing what it flags."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.guard.models import load_input_classifier, load_output_classifier, prompt_scores, response_token_scores
from alignlab.guard.sampler import Guard, GuardedSampler
from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.rollout import SamplingSettings, sample
from alignlab.stages.online.common import sample_and_score
from token_trigger import TokenTrigger

PROMPTS = ["the film was", "a dull and", "i loved the", "not the worst", "the acting was", "hello world",
           "the cast", "a plot that"]
SETTINGS = SamplingSettings(max_new_tokens=12, batch_size=64)


class CountingReward:
    """Scores a completion by its length in characters, and keeps every batch it was asked to score."""

    name = "length"

    def __init__(self):
        self.seen: list[list[str]] = []

    def score(self, batch):
        self.seen.append(list(batch.prompts))
        return [float(len(c)) for c in batch.completions]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    return model, tokenizer, ids


def test_blocked_groups_are_dropped_unscored_and_halted_rollouts_take_the_halted_reward(policy, tiny_model_dir):
    model, tokenizer, ids = policy
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    k = 2
    plain = sample(model, [p for p in ids for _ in range(k)], SETTINGS, pad_id=pad, eos_id=eos, seed=4)
    drawn = [t for c in plain.completion_ids for t in c if t != eos]
    trigger = max(set(drawn), key=drawn.count)  # the token the policy draws most often
    classifier = load_input_classifier(tiny_model_dir, tokenizer)
    scores = prompt_scores(classifier, ids, pad)
    threshold = sorted(scores)[-2]  # the two highest-scoring prompts are refused
    guard = Guard(input=classifier, input_threshold=threshold, scorer_factory=lambda: TokenTrigger(trigger))
    reward = CountingReward()
    scored = sample_and_score(GuardedSampler(model, guard, pad, eos), tokenizer, PROMPTS, ids, k, SETTINGS, reward,
                              "drop", seed=4, halted_reward=-7.0)
    blocked = {PROMPTS[i] for i, s in enumerate(scores) if s >= threshold}
    assert len(blocked) == 2
    assert not blocked & {p for batch in reward.seen for p in batch}  # a refused prompt is never scored
    assert not blocked & set(scored.prompts) and len(scored.prompts) == k * (len(PROMPTS) - 2)
    assert scored.figures["guard/blocked_rate"] == pytest.approx(2 / len(PROMPTS))
    halted = 0
    for completion_ids, text, score in zip(scored.rollouts.completion_ids, scored.completions, scored.scores.tolist()):
        if trigger in completion_ids:  # halted: the rollout ends at the flagged token and takes the set reward
            halted += 1
            assert completion_ids.index(trigger) == len(completion_ids) - 1 and score == -7.0
        else:
            assert score == float(len(text))
    assert halted > 0
    assert scored.figures["guard/halted_rate"] == pytest.approx(halted / (k * len(PROMPTS)))
    assert sum(map(len, reward.seen)) == len(scored.prompts) - halted  # a set reward needs no scoring


def test_without_a_halted_reward_the_source_scores_the_halted_rollout(policy):
    model, tokenizer, ids = policy
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    plain = sample(model, ids, SETTINGS, pad_id=pad, eos_id=eos, seed=2)
    trigger = plain.completion_ids[0][2]
    guard = Guard(scorer_factory=lambda: TokenTrigger(trigger))
    scored = sample_and_score(GuardedSampler(model, guard, pad, eos), tokenizer, PROMPTS, ids, 1, SETTINGS,
                              CountingReward(), "drop", seed=2)
    assert scored.scores.tolist() == [float(len(t)) for t in scored.completions]
    assert len(scored.rollouts.completion_ids[0]) == 3 and scored.figures["guard/blocked_rate"] == 0


@pytest.fixture()
def job(tmp_path, monkeypatch):
    """The prompts file and the rewards (importable as guard_rewards: `zero`, and `length` in
    characters) in tmp_path."""
    (tmp_path / "guard_rewards.py").write_text("def zero(prompts, completions):\n    return [0.0] * len(completions)\n\n"
                                               "def length(prompts, completions):\n"
                                               "    return [float(len(c)) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return tmp_path, str(tmp_path / "prompts.jsonl")


def _half_crossing_threshold(model, tokenizer, classifier, rows, seed: int) -> float:
    """The median of the rows' highest token scores on the model's samples: about half cross it."""
    start = sample(model, rows, SETTINGS, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, seed=seed)
    highest = sorted(max(s) for s in response_token_scores(classifier, rows, start.completion_ids,
                                                             tokenizer.pad_token_id) if s)
    return highest[len(highest) // 2]


def _random_head(classifier) -> None:
    """A random N(0, 1) head: token scores spread over (0, 1), mostly set by the token itself (a
    2-block model's last hidden state is dominated by the token's own embedding)."""
    with torch.no_grad():
        head = classifier.classifier
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(1)))
        head.bias.zero_()


def test_grpo_behind_a_streaming_classifier_learns_to_avoid_what_it_flags(policy, tiny_model_dir, job):
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    model, tokenizer, ids = policy
    tmp_path, prompts = job
    classifier = load_output_classifier(tiny_model_dir, tokenizer)
    _random_head(classifier)
    threshold = _half_crossing_threshold(model, tokenizer, classifier, [p for p in ids for _ in range(4)], seed=0)
    classifier.save_pretrained(tmp_path / "output")
    tokenizer.save_pretrained(tmp_path / "output")
    cfg = GRPOConfig(model=str(tiny_model_dir), prompts=prompts,  # the only reward is the guard's: -1 when halted
                     reward={"type": "callable", "function": "guard_rewards:zero"},
                     guard={"output": str(tmp_path / "output"), "output_threshold": threshold, "halted_reward": -1.0},
                     samples_per_prompt=4, beta=0.0, sampling={"max_new_tokens": 12},
                     train={"iterations": 24, "prompts_per_iteration": 8, "minibatch_size": 32, "lr": 1e-2,
                            "seed": 0, "device": "cpu", "save_every": None})
    run_grpo(cfg, tmp_path / "grpo")
    rates = [json.loads(line)["guard/halted_rate"] for line in (tmp_path / "grpo/log.jsonl").read_text().splitlines()]
    first, last = sum(rates[:4]) / 4, sum(rates[-4:]) / 4
    assert first > 0.3, rates  # the sharpened classifier flags a good share of the starting policy's rollouts
    assert last < first / 3, rates  # 0.45 -> 0.04 here; a third leaves room for other rounding


@pytest.mark.parametrize("kind", ["ppo", "grpo", "rloo", "reinforce_pp", "online_dpo"])
def test_every_reward_driven_online_stage_samples_behind_the_guard(kind, tiny_model_dir, job):
    from alignlab.stages import STAGES

    tmp_path, prompts = job
    config_cls, run = STAGES[kind].load()
    extra = {"samples_per_prompt": 2} if kind in ("grpo", "rloo", "reinforce_pp") else {}
    cfg = config_cls(model=str(tiny_model_dir), prompts=prompts,
                     reward={"type": "callable", "function": "guard_rewards:length"}, sampling={"max_new_tokens": 6},
                     guard={"output": str(tiny_model_dir), "output_threshold": 0.0, "halted_reward": -3.0}, **extra,
                     train={"iterations": 1, "prompts_per_iteration": 4, "minibatch_size": 8, "update_epochs": 1,
                            "device": "cpu", "log_samples": 0})
    run(cfg, tmp_path / kind)
    first = json.loads((tmp_path / kind / "log.jsonl").read_text().splitlines()[0])
    # every score is >= 0: each rollout stops at its first token and takes the halted reward
    assert first["guard/halted_rate"] == 1.0 and first["guard/blocked_rate"] == 0.0
    assert first["response_tokens"] == 1.0 and first["hack/proxy_mean"] == -3.0


def test_a_replayed_guard_cuts_exactly_where_the_streaming_guard_stops(policy, tiny_model_dir):
    from alignlab.guard.replay import ReplayGuardedSampler
    from alignlab.guard.sampler import guarded_sample
    from alignlab.rollout import LocalSampler

    model, tokenizer, ids = policy
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    classifier = load_output_classifier(tiny_model_dir, tokenizer)
    _random_head(classifier)
    rows = [p for p in ids for _ in range(3)]
    # one batch: a streaming guard that ends a batch early shifts the random stream of the next one,
    # so across batches the two draw other (equally distributed) tokens
    settings = SETTINGS
    guard = Guard(output=classifier, output_threshold=_half_crossing_threshold(model, tokenizer, classifier, rows, 8))
    streamed = guarded_sample(model, rows, settings, guard, pad_id=pad, eos_id=eos, seed=8)
    replayed = ReplayGuardedSampler(LocalSampler(model, pad, eos), guard, pad).sample(rows, settings, seed=8)
    assert 0 < sum(h is not None for h in streamed.halted_at) < len(rows)
    assert replayed.halted_at == streamed.halted_at and replayed.completion_ids == streamed.completion_ids
    assert replayed.finished == streamed.finished and replayed.logps == streamed.logps
    assert replayed.output_scores == streamed.output_scores  # the same single-token steps: equal, not close


def test_grpo_on_a_vllm_engine_is_guarded_by_replay(policy, tiny_model_dir, job, monkeypatch):
    import sys

    import fake_vllm

    from alignlab.guard.replay import ReplayGuardedSampler
    from alignlab.stages.online import common
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    built = []
    monkeypatch.setattr(common, "ReplayGuardedSampler", lambda *a: built.append(ReplayGuardedSampler(*a)) or built[-1])
    tmp_path, prompts = job
    cfg = GRPOConfig(model=str(tiny_model_dir), prompts=prompts, rollout_backend="vllm",
                     reward={"type": "callable", "function": "guard_rewards:length"}, sampling={"max_new_tokens": 6},
                     guard={"output": str(tiny_model_dir), "output_threshold": 0.0, "halted_reward": -3.0},
                     samples_per_prompt=2, train={"iterations": 2, "prompts_per_iteration": 4, "minibatch_size": 8,
                                                  "device": "cpu", "log_samples": 0})
    run_grpo(cfg, tmp_path / "grpo-vllm")
    log = [json.loads(line) for line in (tmp_path / "grpo-vllm/log.jsonl").read_text().splitlines()]
    assert [x["guard/halted_rate"] for x in log] == [1.0, 1.0]
    assert all(x["response_tokens"] == 1.0 and x["hack/proxy_mean"] == -3.0 for x in log)
    assert len(built) == 1 and fake_vllm.ENGINES[-1].reloads >= 2  # the engine behind the guard follows the policy
