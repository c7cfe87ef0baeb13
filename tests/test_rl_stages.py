"""PPO, GRPO and RLOO end to end on a tiny model: the toy reward goes up, faults are handled,
the KL bound stops a run, and a run killed midway resumes to the same weights."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.rollout import SamplingSettings, sample
from alignlab.train.online import KLBoundError

PROMPTS = ["the film was", "a dull and", "i loved the", "not the worst", "the acting was", "hello world",
           "the cast", "a plot that"]

# The toy reward: the share of characters of the completion that are the letter "e". A random
# tiny model emits "e" at some base rate; every method should learn to emit more of it.
TOY_REWARD = """
def score(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]

def flaky(prompts, completions):
    out = []
    for c in completions:
        if len(c) % 3 == 0:  # about a third of the samples, whatever the sampler's random stream
            raise ValueError("cannot score this one")
        out.append(c.count("e") / max(len(c), 1))
    return out
"""


@pytest.fixture()
def rl_setup(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "toy_reward_mod.py").write_text(textwrap.dedent(TOY_REWARD))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_reward_mod", None)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return tmp_path, str(tiny_model_dir), str(prompts)


def _sample_reward(model_path: str, prompts_path: str, n: int = 8) -> float:
    """Mean toy reward of fresh samples: n per prompt, fixed seed."""
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS for _ in range(n)]
    r = sample(model, ids, SamplingSettings(max_new_tokens=12, batch_size=64), pad_id=tokenizer.pad_token_id,
               eos_id=tokenizer.eos_token_id, seed=99)
    texts = tokenizer.batch_decode(r.completion_ids, skip_special_tokens=True)
    return sum(t.count("e") / max(len(t), 1) for t in texts) / len(texts)


def _train(**overrides):
    base = {"iterations": 12, "prompts_per_iteration": 8, "minibatch_size": 16, "lr": 3e-3, "save_every": 4,
            "seed": 0, "device": "cpu"}
    return {**base, **overrides}


def _log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ppo_raises_the_toy_reward(rl_setup, critic):
    from alignlab.stages.online.ppo import PPOConfig, run

    tmp, model, prompts = rl_setup
    cfg = PPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                    critic=critic, kl={"beta": 0.01}, vf_coef=0.5,
                    sampling={"max_new_tokens": 12}, train=_train(update_epochs=4, iterations=20, minibatch_size=8, lr=1e-2))
    out = tmp / f"ppo-{critic}"
    metrics = run(cfg, out)
    before, after = _sample_reward(model, prompts), _sample_reward(str(out / "model"), prompts)
    assert after > before + 0.03, (before, after)
    log = _log(out)
    assert len(log) == 20 and all(k in log[-1] for k in ("kl", "entropy", "policy/clip_fraction", "policy/approx_kl",
                                                          "value/explained_variance", "sampler/mean_ratio"))
    assert abs(log[0]["sampler/mean_ratio"] - 1) < 1e-3  # sampler and trainer agree on the log-probs
    assert metrics["iterations"] == 20
    if critic == "separate":
        assert (out / "critic" / "config.json").exists()


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce_pp"])
def test_group_methods_raise_the_toy_reward(rl_setup, algorithm):
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo
    from alignlab.stages.online.reinforce_pp import ReinforcePPConfig, run_reinforce_pp
    from alignlab.stages.online.rloo import RLOOConfig, run_rloo

    tmp, model, prompts = rl_setup
    config, run = {"grpo": (GRPOConfig, run_grpo), "rloo": (RLOOConfig, run_rloo),
                   "reinforce_pp": (ReinforcePPConfig, run_reinforce_pp)}[algorithm]
    cfg = config(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                 samples_per_prompt=4, beta=0.01, sampling={"max_new_tokens": 12},
                 train=_train(iterations=20, prompts_per_iteration=4, minibatch_size=16, lr=1e-2))
    out = tmp / algorithm
    run(cfg, out)
    before, after = _sample_reward(model, prompts), _sample_reward(str(out / "model"), prompts)
    assert after > before + 0.1, (before, after)
    assert "kl" in _log(out)[-1]


def test_a_reward_that_fails_on_some_samples_drops_them_and_goes_on(rl_setup):
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    tmp, model, prompts = rl_setup
    cfg = GRPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:flaky"},
                     samples_per_prompt=2, sampling={"max_new_tokens": 8}, train=_train(iterations=3, prompts_per_iteration=8))
    run_grpo(cfg, tmp / "flaky")
    log = _log(tmp / "flaky")
    assert len(log) == 3 and sum(x["dropped_samples"] for x in log) > 0
    assert all(x["samples"] + x["dropped_samples"] == 16 for x in log)


def test_kl_past_the_bound_stops_and_keeps_the_last_good_checkpoint(rl_setup):
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    tmp, model, prompts = rl_setup
    cfg = GRPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                     samples_per_prompt=4, beta=0.0, sampling={"max_new_tokens": 12},
                     train=_train(iterations=40, lr=3e-3, save_every=1, max_kl=2.0, prompts_per_iteration=4))
    out = tmp / "exploding"
    with pytest.raises(KLBoundError, match="max_kl"):
        run_grpo(cfg, out)
    assert not (out / "model").exists()
    log = _log(out)
    assert len(log) >= 2 and all(x["kl"] <= 2.0 for x in log)  # every update was made on rollouts within the bound
    ckpt = json.loads((out / "checkpoints" / (out / "checkpoints" / "latest").read_text() / "meta.json").read_text())
    assert ckpt["iteration"] == len(log) - 1  # the last policy whose rollouts were within the bound


def test_a_killed_run_resumes_to_the_same_weights(rl_setup, monkeypatch):
    import alignlab.stages.online.common as online_common
    from alignlab.stages.online.ppo import PPOConfig, run

    tmp, model, prompts = rl_setup
    cfg = PPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                    kl={"beta": 0.05, "target": 1.0, "horizon": 100}, sampling={"max_new_tokens": 8},
                    train=_train(update_epochs=2, iterations=6, save_every=2, minibatch_size=4))
    run(cfg, tmp / "whole")

    real, calls = online_common.sample_and_score, {"n": 0}

    def dies_at_iteration_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the kill lands between checkpoints
        return real(*args, **kwargs)

    monkeypatch.setattr(online_common, "sample_and_score", dies_at_iteration_five)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp / "killed")
    assert not (tmp / "killed" / "model").exists()
    monkeypatch.setattr(online_common, "sample_and_score", real)
    resumed = run(cfg, tmp / "killed")
    whole = load_causal_lm(tmp / "whole" / "model").state_dict()
    again = load_causal_lm(tmp / "killed" / "model").state_dict()
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    assert resumed["final_beta"] == json.loads((tmp / "whole" / "metrics.json").read_text())["final_beta"]
    assert len(_log(tmp / "killed")) == 6
    # the samples shown: every iteration's once, as in the run that was never killed
    assert (tmp / "killed" / "samples.jsonl").read_text() == (tmp / "whole" / "samples.jsonl").read_text()


def test_grpo_writes_what_the_policy_says(rl_setup):
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    tmp, model, prompts = rl_setup
    cfg = GRPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                     samples_per_prompt=2, sampling={"max_new_tokens": 6},
                     train=_train(iterations=3, prompts_per_iteration=4, minibatch_size=8, log_samples=3))
    run_grpo(cfg, tmp / "shown")
    records = [json.loads(x) for x in (tmp / "shown" / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3]
    assert [r.get("final", False) for r in records] == [False] * 9 + [True] * 3  # and the final policy's
    for r in records:
        assert r["prompt"] in PROMPTS and isinstance(r["completion"], str)
        assert r["reward"] == pytest.approx(r["completion"].count("e") / max(len(r["completion"]), 1))


def test_spin_writes_its_samples_beside_the_demonstrations(rl_setup):
    from alignlab.stages.online.spin import SPINConfig, run_spin

    tmp, model, _ = rl_setup
    sft = tmp / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": p, "completion": " was fine"}) + "\n" for p in PROMPTS))
    cfg = SPINConfig(model=model, data=str(sft), sampling={"max_new_tokens": 6}, max_length=32, max_prompt_length=16,
                     train=_train(iterations=2, prompts_per_iteration=4, minibatch_size=4, log_samples=2))
    run_spin(cfg, tmp / "spin")
    records = [json.loads(x) for x in (tmp / "spin" / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("final", False)) for r in records] == [(1, False)] * 2 + [(2, False)] * 2 + [(2, True)] * 2
    for r in records:  # SPIN has no reward: the sample is shown beside the demonstration it plays against
        assert r["prompt"].strip() in PROMPTS and r["demonstration"].strip() == "was fine"
        assert isinstance(r["completion"], str) and "reward" not in r


@pytest.mark.parametrize(("rank", "log_samples"), [(0, 3), (1, 3), (0, 0)])
def test_samples_jsonl_is_written_by_the_main_process_only(tmp_path, rank, log_samples):
    from alignlab.train.distributed import Dist
    from alignlab.train.online import OnlineSettings, OnlineStage, run_online

    model, asked = torch.nn.Linear(2, 1), []

    def shown(n):
        asked.append(n)
        return [{"prompt": "p", "completion": "c", "reward": 1.0}] * n

    stage = OnlineStage(lambda it: ({"x": torch.ones(4, 2)}, {"reward": 0.0}),
                        lambda b: (model(b["x"]).pow(2).mean(), {}), recent_samples=shown, fresh_samples=shown)
    settings = _train(iterations=2, prompts_per_iteration=4, minibatch_size=4, save_every=None, log_samples=log_samples)
    run_online(model, stage, OnlineSettings(**settings), tmp_path, device=torch.device("cpu"), expected_samples=4,
               name="toy", dist=Dist(rank=rank))
    path = tmp_path / "samples.jsonl"
    if rank or not log_samples:  # another process, or switched off: nothing asked for, nothing written
        assert asked == [] and not path.exists()
    else:  # each iteration's, then the final policy's
        assert asked == [3, 3, 3]
        assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1] * 3 + [2] * 6


def test_ppo_with_lora_keeps_one_model_in_memory(rl_setup, monkeypatch):
    """LoRA + shared critic: the reference is the policy with its adapter off (no copy is loaded),
    the value head sits on the policy's trunk, and training still raises the reward."""
    import alignlab.models.reference as reference
    from alignlab.stages.online.ppo import PPOConfig, run

    def no_copies(*args, **kwargs):
        raise AssertionError("a frozen copy was loaded in LoRA mode")

    tmp, model, prompts = rl_setup
    # LoRA leaves the (tied) embeddings alone, and a random model's logits are ~uniform whatever its
    # hidden states, so scale the embeddings up: then the adapted layers can move the distribution.
    sharp = load_causal_lm(model)
    with torch.no_grad():
        sharp.get_input_embeddings().weight.mul_(20)
    sharp.save_pretrained(tmp / "sharp")
    load_tokenizer(model).save_pretrained(tmp / "sharp")
    model = str(tmp / "sharp")
    monkeypatch.setattr(reference.FrozenCopy, "from_pretrained", classmethod(no_copies))
    # 30 iterations: at 20 the margin below held for 6 of seeds 0-7 on a CPU and 2 of 0-3 on a GPU; at 30, all 8
    cfg = PPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                    critic="shared", lora={"r": 8, "alpha": 16}, kl={"beta": 0.01}, vf_coef=0.5,
                    sampling={"max_new_tokens": 12}, train=_train(update_epochs=4, iterations=30, minibatch_size=8, lr=3e-3))
    out = tmp / "ppo-lora"
    run(cfg, out)
    log = _log(out)
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # adapter starts at zero: policy == reference
    assert _sample_reward(str(out / "model"), prompts) > _sample_reward(model, prompts) + 0.03
    assert not (out / "critic").exists()


def test_grpo_with_gradient_checkpointing_makes_the_same_updates(rl_setup, monkeypatch):
    import alignlab.ops.logps as logps_module
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    tmp, model, prompts = rl_setup
    # checkpointing takes the one-pass log-prob route; the run without it would share prompts
    # (the same to rounding, tested in test_shared_prefix.py; two Adam steps of 0.04 made that 2e-5 apart)
    monkeypatch.setattr(logps_module, "_can_share_prefixes", lambda model: False)
    weights = []
    for checkpointing in (False, True):
        cfg = GRPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                         samples_per_prompt=4, beta=0.01, sampling={"max_new_tokens": 8},
                         train=_train(iterations=2, prompts_per_iteration=4, minibatch_size=8, lr=1e-2,
                                      gradient_checkpointing=checkpointing))
        out = tmp / f"grpo-checkpointing-{checkpointing}"
        run_grpo(cfg, out)
        trained = load_causal_lm(out / "model")
        weights.append(torch.cat([p.detach().flatten() for p in trained.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-6)
    assert not torch.allclose(weights[0], torch.cat([p.flatten() for p in load_causal_lm(model).parameters()]))


@pytest.mark.parametrize("synced", [True, False], ids=["synced", "stale-engine"])
def test_ppo_samples_with_a_vllm_engine_whose_weights_follow_the_policy(rl_setup, monkeypatch, synced):
    # The stand-in engine (tests/fake_vllm.py) samples with its own copy of the weights. PPO logs
    # how far the sampler's log-probs are from the policy's: ~0 only if the engine is given the
    # updated weights before every iteration, as it must be (a stale engine drifts away).
    import fake_vllm

    from alignlab.rollout import VLLMSampler
    from alignlab.stages.online.ppo import PPOConfig, run

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    if not synced:
        monkeypatch.setattr(VLLMSampler, "load_weights", lambda self, model: None)
    tmp, model, prompts = rl_setup
    cfg = PPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                    rollout_backend="vllm", vllm={"gpu_memory_utilization": 0.5},
                    sampling={"max_new_tokens": 8}, train=_train(update_epochs=2, iterations=3, minibatch_size=4, lr=1e-2))
    run(cfg, tmp / f"ppo-vllm-{synced}")
    engine = fake_vllm.ENGINES[-1]
    assert engine.options == {"gpu_memory_utilization": 0.5}
    drift = [abs(x["sampler/mean_ratio"] - 1) for x in _log(tmp / f"ppo-vllm-{synced}")]
    assert drift[0] < 1e-4  # the engine starts from the same model
    if synced:
        # one sync per iteration, and one more for the final policy's samples (samples.jsonl)
        assert engine.reloads == 4 and engine.prefix_cache_resets == 4
        assert max(drift) < 1e-4
    else:
        assert engine.reloads == 0 and max(drift[1:]) > 1e-3


def test_dr_grpo_update_does_not_depend_on_micro_batching(rl_setup, monkeypatch):
    # Each micro-batch drops the padding columns its rows share, so its width follows its longest row
    # (prompts of 1 to 12 words here). Dr. GRPO divides by B × max_new_tokens, so one micro-batch or
    # four give the same gradient at every step. The gradients are compared, not the weights alone:
    # Adam's first steps move each weight by about ±lr whatever the gradient's scale, which hid the
    # padded-width normaliser in the weights.
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    tmp, model, _ = rl_setup
    prompts = tmp / "ragged.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
        "the", "a dull and", "i loved the soundtrack and the", "the film was a delight from start to finish and the")))
    grads, real_clip = [], torch.nn.utils.clip_grad_norm_

    def clip_spy(params, max_norm, *args, **kwargs):  # called once per optimizer step, on the summed gradient
        params = list(params)
        grads[-1].append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone())
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_spy)
    for micro in (16, 4):
        grads.append([])
        cfg = GRPOConfig(model=model, prompts=str(prompts), reward={"type": "callable", "function": "toy_reward_mod:score"},
                         samples_per_prompt=4, beta=0.04, scale_rewards=False, aggregation="token_sum_norm",
                         sampling={"max_new_tokens": 12},
                         train=_train(iterations=2, prompts_per_iteration=4, minibatch_size=16, micro_batch_size=micro,
                                      lr=1e-2, update_epochs=2))
        run_grpo(cfg, tmp / f"dr-grpo-{micro}")
    whole, split = grads
    assert len(whole) == len(split) == 4  # 2 iterations x 2 epochs, one step each
    # float32 sums split four ways round differently from one sum; the padded width's normaliser
    # changed the gradient by several per cent
    for a, b in zip(whole, split):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max(), ((a - b).abs().max(), a.abs().max())


def _stale_engine_and_loss_spy(monkeypatch, stage_module, loss_name: str) -> list:
    """A stand-in vLLM engine that never gets new weights, and the token weights each call of the
    stage's loss receives (the list returned fills as the stage runs)."""
    import fake_vllm

    from alignlab.rollout import VLLMSampler

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setattr(VLLMSampler, "load_weights", lambda self, model: None)
    seen = []
    real = getattr(stage_module, loss_name)
    monkeypatch.setattr(stage_module, loss_name, lambda *a, **k: seen.append(k["token_weights"]) or real(*a, **k))
    return seen


@pytest.mark.parametrize("level, mode", [("token", "truncate"), ("sequence", "mask")])
def test_grpo_corrects_a_stale_engines_samples_with_bounded_importance_weights(rl_setup, monkeypatch, level, mode):
    # A stand-in engine that never gets the new weights samples from the starting policy: the
    # trainer's π_old drifts from it, and each token's loss is weighted by π_old/π_sampler, bounded.
    import alignlab.stages.online.grpo as grpo

    seen = _stale_engine_and_loss_spy(monkeypatch, grpo, "grpo_loss")
    tmp, model, prompts = rl_setup
    threshold = 1.02
    cfg = grpo.GRPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                          rollout_backend="vllm", samples_per_prompt=2, sampling={"max_new_tokens": 8},
                          rollout_correction={"level": level, "mode": mode, "threshold": threshold},
                          train=_train(iterations=4, prompts_per_iteration=4, minibatch_size=8, lr=3e-2))
    grpo.run_grpo(cfg, tmp / f"tis-{mode}")
    log = _log(tmp / f"tis-{mode}")
    assert log[0]["is/ratio_mean"] == pytest.approx(1.0, abs=1e-4) and log[0]["is/bounded_share"] == 0.0
    assert max(x["is/bounded_share"] for x in log[1:]) > 0  # the stale engine's samples needed the bound
    for x in log:
        assert x["is/weight_mean"] <= max(x["is/ratio_mean"], threshold) + 1e-6
    # every loss call got the weights, bounded as asked (0 where masked out or off the response)
    assert seen and all(w is not None for w in seen)
    weights = torch.cat([w.flatten() for w in seen])
    assert float(weights.max()) <= threshold + 1e-6
    if mode == "mask":
        assert float((weights == 0).float().mean()) > 0
    if level == "sequence":  # one weight per sample, on each of its tokens
        assert all(len(set(row[row > 0].tolist())) <= 1 for w in seen for row in w)


def test_grpo_with_lora_syncs_only_the_adapter_to_the_engine(rl_setup, monkeypatch):
    import fake_vllm

    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", fake_vllm)
    tmp, model, prompts = rl_setup
    cfg = GRPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                     rollout_backend="vllm", vllm={"enable_lora": True}, lora={"r": 4, "alpha": 8}, samples_per_prompt=2,
                     sampling={"max_new_tokens": 8}, train=_train(iterations=3, prompts_per_iteration=4, minibatch_size=8,
                                                                  update_epochs=2, lr=3e-2))
    run_grpo(cfg, tmp / "grpo-lora-vllm")
    engine = fake_vllm.ENGINES[-1]
    assert engine.options["max_lora_rank"] == 8  # the smallest bound vLLM accepts that holds r = 4
    assert engine.reloads == 0  # the base never moves: only adapters went over
    # one adapter per iteration and one for the final samples, each sampled under its own id
    assert [e for e in engine.events if e.startswith("generate")] == [f"generate lora {i}" for i in range(1, 5)]
    log = _log(tmp / "grpo-lora-vllm")
    assert max(abs(x["sampler/mean_ratio"] - 1) for x in log) < 1e-4  # sampler and trainer in step


def test_vllm_with_a_sharded_policy_is_refused_before_any_engine_starts():
    from types import SimpleNamespace

    from alignlab.stages.online.common import _engine_options
    from alignlab.stages.online.grpo import GRPOConfig

    cfg = GRPOConfig(model="m", prompts="p", reward={"type": "callable", "function": "x:y"}, rollout_backend="vllm",
                     train={"parallel": "fsdp"})
    with pytest.raises(ValueError, match="use train.parallel ddp"):
        _engine_options(cfg, cfg.train, SimpleNamespace(enabled=True))
    assert _engine_options(cfg, cfg.train, SimpleNamespace(enabled=False)) == {}


def test_vllm_server_settings_reach_the_server_sampler(rl_setup, monkeypatch, tmp_path):
    from types import SimpleNamespace

    import alignlab.stages.online.common as common
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    class Reached(Exception):
        pass

    seen = {}

    def spy(url, model, **options):
        seen.update(url=url, model=model, **options)
        raise Reached

    monkeypatch.setattr(common, "VLLMServerSampler", spy)
    _, model, prompts = rl_setup
    settings = {"url": "http://gpu-box:8001", "served_model": "policy", "sync_dir": str(tmp_path / "shared"),
                "parallel_requests": 7}
    cfg = GRPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                     rollout_backend="vllm-server", vllm_server=settings, train=_train(iterations=1))
    with pytest.raises(Reached):
        run_grpo(cfg, tmp_path / "out")
    assert seen == {"url": "http://gpu-box:8001", "model": "policy", "sync_dir": str(tmp_path / "shared"), "parallel_requests": 7}
    with pytest.raises(ValueError, match="use rollout_backend vllm"):
        common._server_sampler(cfg, SimpleNamespace(enabled=True))


def test_ppo_corrects_a_stale_engines_samples_with_bounded_importance_weights(rl_setup, monkeypatch):
    # as GRPO's test above: an engine that never gets the new weights; PPO's π_old is the trainer's
    # forward, so the weights π_old/π_sampler act on the policy loss from the second iteration on
    import alignlab.stages.online.ppo as ppo

    seen = _stale_engine_and_loss_spy(monkeypatch, ppo, "ppo_loss")
    tmp, model, prompts = rl_setup
    cfg = ppo.PPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "toy_reward_mod:score"},
                        rollout_backend="vllm", critic="shared", sampling={"max_new_tokens": 8},
                        rollout_correction={"level": "token", "mode": "truncate", "threshold": 1.02},
                        train=_train(iterations=3, prompts_per_iteration=4, minibatch_size=4, update_epochs=1, lr=3e-2))
    ppo.run(cfg, tmp / "ppo-tis")
    log = _log(tmp / "ppo-tis")
    assert log[0]["is/ratio_mean"] == pytest.approx(1.0, abs=1e-4) and log[0]["is/bounded_share"] == 0.0
    assert max(x["is/bounded_share"] for x in log[1:]) > 0
    weights = torch.cat([w.flatten() for w in seen if w is not None])
    assert len(seen) >= 3 and all(w is not None for w in seen)
    assert weights.max() <= 1.02 + 1e-6 and weights.min() >= 0
