"""Every documented setting of the online stages reaches the code that uses it.

Each stage runs with every `train.*` and `sampling.*` key set to a value other than its default;
spies stand in for the loop (`run_online`) and the sampler and record what they were handed. A
stage that overwrote one of them (as PPO and GRPO once overwrote `train.update_epochs` with a
top-level key of their own) fails here. A new setting must be added to the tables below.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from alignlab.rollout import SamplingSettings
from alignlab.stages import STAGES
from alignlab.train.online import OnlineSettings

TRAIN = {
    "iterations": 3, "prompts_per_iteration": 4, "update_epochs": 3, "minibatch_size": 8, "micro_batch_size": 2,
    "lr": 2e-4, "weight_decay": 0.01, "adam_betas": (0.8, 0.9), "adam_eps": 1e-6, "schedule": "cosine",
    "warmup_ratio": 0.1, "max_grad_norm": 0.5, "seed": 7, "precision": "bf16", "device": "cpu", "log_every": 2,
    "save_every": 3, "max_kl": 5.0, "snapshot_every": 2, "gradient_checkpointing": True, "log_samples": 2,
    "keep_checkpoints": True,
}
SAMPLING = {"max_new_tokens": 5, "temperature": 0.7, "top_k": 3, "top_p": 0.9, "batch_size": 7,
            "draw": "multinomial", "cache": "static"}
ONLINE = ["ppo", "grpo", "rloo", "online_dpo", "spin"]
# where each stage's module calls the loop and the sampler
LOOP = {"ppo": "alignlab.stages.ppo", "grpo": "alignlab.stages.policy_gradient",
        "rloo": "alignlab.stages.policy_gradient", "online_dpo": "alignlab.stages.online_preference",
        "spin": "alignlab.stages.online_preference"}


class Reached(Exception):
    """Raised by the sampler spy: the settings have been seen, nothing more needs to run."""


def test_the_tables_cover_every_setting():
    assert set(TRAIN) == set(OnlineSettings.model_fields)
    assert set(SAMPLING) == set(SamplingSettings.model_fields)
    for name, value in {**TRAIN, **SAMPLING}.items():
        field = {**OnlineSettings.model_fields, **SamplingSettings.model_fields}[name]
        assert value != field.default, name  # a default value would prove nothing


@pytest.fixture()
def inputs(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "reach_reward.py").write_text(textwrap.dedent("""
        def score(prompts, completions):
            return [float(len(c)) for c in completions]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("reach_reward", None)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("the film", "a dull", "i loved", "the cast")))
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": p, "completion": " was fine"}) + "\n"
                             for p in ("the film", "a dull", "i loved", "the cast")))
    return str(tiny_model_dir), str(prompts), str(demos)


def _config(kind: str, model: str, prompts: str, demos: str) -> dict:
    common = {"model": model, "train": TRAIN, "sampling": SAMPLING}
    if kind == "spin":
        return {**common, "data": demos}
    return {**common, "prompts": prompts, "reward": {"type": "callable", "function": "reach_reward:score"}}


@pytest.mark.parametrize("kind", ONLINE)
def test_every_train_and_sampling_setting_reaches_the_loop_and_the_sampler(kind, inputs, tmp_path, monkeypatch):
    import importlib

    import alignlab.rollout.local as local

    seen = {}

    def loop_spy(policy, stage, settings, out, **kwargs):
        seen["train"] = settings
        stage.collect(0)  # the stage's own sampling call, into the sampler spy

    def sampler_spy(model, prompts, settings, **kwargs):
        seen["sampling"] = settings
        raise Reached

    monkeypatch.setattr(importlib.import_module(LOOP[kind]), "run_online", loop_spy)
    monkeypatch.setattr(local, "sample", sampler_spy)
    if kind == "spin":
        monkeypatch.setattr(importlib.import_module(LOOP[kind]), "sample", sampler_spy)
    config_cls, run = STAGES[kind].load()
    cfg = config_cls.model_validate(_config(kind, *inputs))
    with pytest.raises(Reached):
        run(cfg, tmp_path / kind)
    for name, value in TRAIN.items():
        assert getattr(seen["train"], name) == value, f"{kind}: train.{name}"
    for name, value in SAMPLING.items():
        assert getattr(seen["sampling"], name) == value, f"{kind}: sampling.{name}"


def test_a_partial_block_keeps_the_stages_own_defaults():
    # PPO declares train.update_epochs 4: setting only the learning rate must not reset it to the block's 1
    from alignlab.stages.ppo import PPOConfig

    base = {"model": "m", "prompts": "p", "reward": {"type": "gold", "task": "sentiment"}}
    assert PPOConfig.model_validate({**base, "train": {"lr": 1e-5}}).train.update_epochs == 4
    assert PPOConfig.model_validate({**base, "train": {"update_epochs": 2}}).train.update_epochs == 2
    assert PPOConfig.model_validate({**base, "train": OnlineSettings(lr=1e-5)}).train.update_epochs == 4
    # SL-CAI declares sampling.max_new_tokens 128: setting only the temperature keeps it
    config_cls, _ = STAGES["sl_cai"].load()
    cfg = config_cls.model_validate({"policy": "m", "prompts": "p", "feedback": {"type": "local", "path": "m"},
                                     "sampling": {"temperature": 0.5}})
    assert cfg.sampling.max_new_tokens == 128 and cfg.sampling.temperature == 0.5


def test_the_old_top_level_update_epochs_says_where_it_lives():
    from pydantic import ValidationError

    from alignlab.stages.policy_gradient import GRPOConfig

    with pytest.raises(ValidationError, match="train.update_epochs"):
        GRPOConfig.model_validate({"model": "m", "prompts": "p", "reward": {"type": "gold", "task": "sentiment"},
                                   "update_epochs": 2})


def test_grpo_settings_reach_its_loss(inputs, tmp_path, monkeypatch):
    import alignlab.stages.policy_gradient as pg
    from alignlab.losses.policy_gradient import grpo_loss

    seen = {}

    def loss_spy(*args, **kwargs):
        seen.update(kwargs)
        return grpo_loss(*args, **kwargs)

    monkeypatch.setattr(pg, "grpo_loss", loss_spy)
    model, prompts, _ = inputs
    cfg = pg.GRPOConfig(model=model, prompts=prompts, reward={"type": "callable", "function": "reach_reward:score"},
                        beta=0.07, clip_low=0.15, clip_high=0.3, aggregation="token_sum_norm", kl_bias_correction=True,
                        sampling={"max_new_tokens": 6}, samples_per_prompt=2,
                        train={"iterations": 1, "prompts_per_iteration": 2, "minibatch_size": 4, "device": "cpu"})
    pg.run_grpo(cfg, tmp_path / "grpo")
    assert seen == {"beta": 0.07, "clip_low": 0.15, "clip_high": 0.3, "aggregation": "token_sum_norm",
                    "max_tokens": 6, "kl_bias_correction": True}
