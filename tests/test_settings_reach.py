"""Every documented setting reaches the code that uses it.

Each check observes the consumer: a spy stands in for the function that uses a setting and
records the arguments it was called with (by parameter name), or the loop's own behaviour is
counted. The parsed config alone is never the evidence. Three layers:

1. Hand-off. Each online stage gives every `train.*` value to the loop (`run_online`) and every
   `sampling.*` value to the sampler; the sampler's call carries the iteration's seed and
   `prompts_per_iteration` x k prompts; `train.device` reaches `runtime`. Each offline stage gives
   every `train.*` value to `alignlab.train.train`. (PPO and GRPO once overwrote
   `train.update_epochs` with a top-level key of their own: that fails here.)
2. The loops use what they are handed: the optimizer's settings, the schedule, the number of
   steps and micro-batches, the shuffling seed, gradient clipping, precision, the log, eval,
   checkpoint and snapshot periods, samples.jsonl.
3. Each online stage's own settings (KL coefficient, clip ranges, aggregation, advantages, the
   temperature of the trainer's log-probs, the pair loss, ...) reach its loss and advantage code
   in one real iteration on a tiny model.

`test_the_tables_cover_every_setting` walks every online stage's config and the train blocks: a
new setting must be observed in one of the tables below, or be named in ELSEWHERE with the test
that observes it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import sys
import textwrap

import pytest
import torch
from pydantic import BaseModel

from alignlab.rollout import SamplingSettings
from alignlab.stages import STAGES
from alignlab.train import TrainSettings
from alignlab.train.online import OnlineSettings

CPU = torch.device("cpu")

# Layer 1 and 2: every train/sampling setting, each at a value no stage has as its default.
TRAIN = {
    "iterations": 3, "prompts_per_iteration": 4, "update_epochs": 3, "minibatch_size": 8, "micro_batch_size": 2,
    "lr": 2e-4, "weight_decay": 0.01, "adam_betas": (0.8, 0.9), "adam_eps": 1e-6, "schedule": "cosine",
    "warmup_ratio": 0.2, "max_grad_norm": 0.5, "seed": 7, "precision": "bf16", "device": "cpu", "log_every": 2,
    "save_every": 2, "max_kl": 5.0, "snapshot_every": 2, "gradient_checkpointing": True, "log_samples": 2,
    "keep_checkpoints": True, "parallel": "fsdp", "cpu_offload": True,
}
SAMPLING = {"max_new_tokens": 5, "temperature": 0.7, "top_k": 3, "top_p": 0.9, "batch_size": 7,
            "draw": "multinomial", "cache": "static"}
TRAIN_OFFLINE = {
    "epochs": 2.0, "max_steps": 3, "batch_size": 4, "micro_batch_size": 2, "lr": 2e-4, "weight_decay": 0.01,
    "adam_betas": (0.8, 0.9), "adam_eps": 1e-6, "schedule": "constant", "warmup_ratio": 0.4, "warmup_steps": 2,
    "max_grad_norm": 0.5, "seed": 7, "precision": "bf16", "device": "cpu", "log_every": 2, "eval_every": 2,
    "save_every": 2, "group_by_length": False, "keep_checkpoints": True, "gradient_checkpointing": True,
    "parallel": "fsdp", "cpu_offload": True,
}
# the train settings a loop does not use itself, and the layer that observes them instead
# sharding only acts with several processes: test_fsdp.py runs them (and test_settings_reach's loops run one)
SHARDING = {"parallel": "test_fsdp.py (2 processes: each writes its shards, the same update as DDP or 1 process)",
            "cpu_offload": "test_fsdp.py::test_cpu_offload_is_refused_where_it_cannot_act (needs a GPU)"}
ONLINE_TRAIN_OUTSIDE_THE_LOOP = {"prompts_per_iteration": "layer 1 (sampler's prompts)", "device": "layer 1 (runtime)",
                                 "keep_checkpoints": "layer 3 (checkpoints/ kept)", **SHARDING}
OFFLINE_TRAIN_OUTSIDE_THE_LOOP = {
    **SHARDING,
    "device": "layer 1 (runtime)",
    "keep_checkpoints": "test_checkpoints.py::test_a_finished_stage_drops_its_checkpoints_unless_asked "
                        "(every stage passes its config to the same `finish`)",
}

ONLINE = ["ppo", "grpo", "rloo", "reinforce_pp", "online_dpo", "spin"]
GROUP = ("grpo", "rloo", "reinforce_pp")  # one short file each over the shared group run
OFFLINE = ["pretrain", "sft", "reward_model", "dpo", "kto", "prm"]
STAGE_MODULE = {kind: f"alignlab.stages.{STAGES[kind].module}" for kind in ONLINE + OFFLINE}
for _module in sorted(set(STAGE_MODULE.values())):
    # imported now, before any spy: a module first imported under a spy would keep the spy as its
    # own name for the function (`from alignlab.stages.common import load_policy`) for good
    importlib.import_module(_module)

# Layer 3: each online stage's own settings at non-default values, and where each is observed:
# setting -> [(module, function, parameter)]; the spy on module.function must see the value there.
OWN = {
    "ppo": {"critic": "shared", "kl": {"beta": 0.3, "target": 2.0, "horizon": 500, "estimator": "k3"}, "gamma": 0.9,
            "lam": 0.8, "clip": 0.15, "value_clip": 0.3, "vf_coef": 0.4, "whiten_rewards": True,
            "whiten_advantages": False},
    "grpo": {"beta": 0.07, "kl_bias_correction": True, "scale_rewards": False, "aggregation": "token_sum_norm",
             "clip_low": 0.15, "clip_high": 0.3, "samples_per_prompt": 3},
    "rloo": {"beta": 0.2, "aggregation": "token_mean", "clip_low": 0.15, "clip_high": 0.3, "samples_per_prompt": 3},
    "reinforce_pp": {"beta": 0.2, "aggregation": "token_mean", "clip_low": 0.15, "clip_high": 0.3,
                     "samples_per_prompt": 3},
    "online_dpo": {"loss": "robust", "beta": 0.3, "label_smoothing": 0.1, "min_gap": 0.01},
    "spin": {"loss": "hinge", "beta": 0.3, "label_smoothing": 0.1, "reference": "initial", "max_length": 40},
}
PPO, PG, PREF = "alignlab.stages.online.ppo", "alignlab.stages.online.policy_gradient", "alignlab.stages.online.preference"
SPIN = "alignlab.stages.online.spin"
GRPO, RLOO, RPP = "alignlab.stages.online.grpo", "alignlab.stages.online.rloo", "alignlab.stages.online.reinforce_pp"
COMMON, ONLINE_COMMON = "alignlab.stages.common", "alignlab.stages.online.common"
REACH = {
    "ppo": {
        "kl.beta": [(PPO, "make_kl_controller", "beta"), (PPO, "kl_penalised_rewards", "beta")],
        "kl.target": [(PPO, "make_kl_controller", "target")], "kl.horizon": [(PPO, "make_kl_controller", "horizon")],
        "kl.estimator": [(PPO, "kl_penalised_rewards", "estimator")],
        "gamma": [(PPO, "gae", "gamma")], "lam": [(PPO, "gae", "lam")],
        "clip": [(PPO, "ppo_loss", "clip")], "value_clip": [(PPO, "ppo_loss", "value_clip")],
        "vf_coef": [(PPO, "ppo_loss", "vf_coef")],
    },
    "grpo": {
        **{key: [(GRPO, "grpo_loss", key)] for key in ("beta", "kl_bias_correction", "aggregation", "clip_low", "clip_high")},
        "scale_rewards": [(GRPO, "group_normalised_advantages", "scale")],
        "samples_per_prompt": [(GRPO, "group_normalised_advantages", "k")],
    },
    "rloo": {
        **{key: [(PG, "clipped_policy_loss", key)] for key in ("aggregation", "clip_low", "clip_high")},
        "samples_per_prompt": [(RLOO, "leave_one_out_advantages", "k")],
    },
    "reinforce_pp": {
        **{key: [(PG, "clipped_policy_loss", key)] for key in ("aggregation", "clip_low", "clip_high")},
        "samples_per_prompt": [(RPP, "batch_normalised_group_advantages", "k")],
    },
    "online_dpo": {"min_gap": [(PREF, "rank_pairs", "min_gap")], "beta": [(PREF, "implicit_reward_figures", "beta")]},
    "spin": {"max_length": [(SPIN, "load_demonstrations", "max_length")]},
}
# settings every reward-driven online stage has (OnlineConfig), and SPIN's counterparts
COMMON_OWN = {"dtype": "bfloat16", "max_prompt_length": 17, "on_reward_error": "stop", "lora": {"r": 4, "alpha": 8}}
COMMON_REACH = {"dtype": [(COMMON, "load_policy", "dtype")], "lora": [(COMMON, "load_policy", "lora")],
                "max_prompt_length": [(ONLINE_COMMON, "load_prompt_ids", "max_prompt_length")],
                "on_reward_error": [(ONLINE_COMMON, "score_safely", "on_error")],
                "ref_model": [(COMMON, "frozen_reference", "ref_path")]}
SPIN_COMMON_REACH = {"dtype": [(SPIN, "load_policy", "dtype")], "lora": [(SPIN, "load_policy", "lora")],
                     "max_prompt_length": [(SPIN, "load_demonstrations", "max_prompt_length")]}
# observed by a custom check in test_each_online_stages_own_settings_reach_their_consumers
CUSTOM = {
    "ppo": {"critic": "ValueHead built, no critic loaded", "whiten_rewards": "masked_whiten calls",
            "whiten_advantages": "masked_whiten calls"},
    "grpo": {"track_kl": "test_without_track_kl_no_reference_is_loaded"},
    "rloo": {"beta": "the rewards of the leave-one-out baseline", "track_kl": "test_without_track_kl_no_reference_is_loaded"},
    "reinforce_pp": {"beta": "the rewards of the group baseline", "track_kl": "test_without_track_kl_no_reference_is_loaded"},
    "online_dpo": {"loss": "preference_objective", "label_smoothing": "preference_objective"},
    "spin": {"loss": "preference_objective", "beta": "preference_objective", "label_smoothing": "preference_objective",
             "reference": "frozen_reference called"},
}
# settings whose consumer another test observes, or that every run needs to run at all
ELSEWHERE = {
    "model": "every run loads it", "prompts": "every run samples them", "data": "every run reads it",
    "reward": "every run scores with it",
    # OnlineRun.start picks the sampler for every reward-driven stage; the PPO test observes it
    "rollout_backend": "test_rl_stages.py::test_ppo_samples_with_a_vllm_engine_whose_weights_follow_the_policy",
    "vllm": "test_rl_stages.py::test_ppo_samples_with_a_vllm_engine_whose_weights_follow_the_policy",
    "critic_model": "layer 1: test_every_train_and_sampling_setting_reaches_the_loop_and_the_sampler",
    **{f"vllm_server.{name}": "test_rl_stages.py::test_vllm_server_settings_reach_the_server_sampler"
       for name in ("url", "served_model", "sync_dir", "parallel_requests")},
    "rollout_correction": "test_rl_stages.py::test_grpo_corrects_a_stale_engines_samples_with_bounded_importance_weights",
    "monitors": "test_monitors.py::test_every_reward_driven_online_stage_feeds_the_monitor (and the GRPO runs there)",
    "guard": "test_guard_rollouts.py::test_every_reward_driven_online_stage_samples_behind_the_guard",
}


class Reached(Exception):
    """Raised by a spy once the settings have been seen: nothing more needs to run."""


class Spy:
    """Stands in for `module.name`: records each call's arguments by parameter name, then calls the
    real function (with `substitute` values in place of the given ones, e.g. a cheaper dtype)."""

    def __init__(self, monkeypatch, module: str, name: str, substitute: dict | None = None, stop: bool = False):
        mod = importlib.import_module(module)
        self.real, self.calls = getattr(mod, name), []
        signature = inspect.signature(self.real)

        def spy(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            self.calls.append(dict(bound.arguments))
            if stop:
                raise Reached
            bound.arguments.update(substitute or {})
            return self.real(*bound.args, **bound.kwargs)

        monkeypatch.setattr(mod, name, spy)

    def seen(self, parameter: str) -> list:
        return [call[parameter] for call in self.calls]


def _fields(model_cls: type[BaseModel], prefix: str = "") -> set[str]:
    """The config's settings, nested blocks (PPO's kl) walked; the train and sampling blocks are
    checked as wholes by their own tables."""
    out = set()
    for name, field in model_cls.model_fields.items():
        default = field.default
        if name in ("train", "sampling"):
            continue
        if isinstance(default, BaseModel):
            out |= _fields(type(default), f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def test_the_tables_cover_every_setting():
    assert set(TRAIN) == set(OnlineSettings.model_fields)
    assert set(SAMPLING) == set(SamplingSettings.model_fields)
    assert set(TRAIN_OFFLINE) == set(TrainSettings.model_fields)
    assert set(ONLINE_LOOP_CHECKS) | set(ONLINE_TRAIN_OUTSIDE_THE_LOOP) == set(OnlineSettings.model_fields)
    assert set(OFFLINE_LOOP_CHECKS) | set(OFFLINE_TRAIN_OUTSIDE_THE_LOOP) == set(TrainSettings.model_fields)
    for kind in ONLINE:
        config_cls, _ = STAGES[kind].load()
        common = SPIN_COMMON_REACH if kind == "spin" else COMMON_REACH
        observed = set(REACH[kind]) | set(common) | set(CUSTOM[kind]) | set(ELSEWHERE)
        assert _fields(config_cls) <= observed, f"{kind}: {_fields(config_cls) - observed} observed nowhere"
        assert set(REACH[kind]) | set(CUSTOM[kind]) <= _fields(config_cls), kind  # no stale rows
    # a default value would prove nothing: every value differs from the block's and each stage's default
    for table, block, kinds in ((TRAIN, OnlineSettings, ONLINE), (TRAIN_OFFLINE, TrainSettings, OFFLINE)):
        defaults = [block()] + [STAGES[kind].load()[0].model_fields["train"].default for kind in kinds]
        for name, value in table.items():
            assert all(getattr(d, name) != value for d in defaults), name
    for name, value in SAMPLING.items():
        assert value != SamplingSettings.model_fields[name].default, name


# --------------------------------------------------------------------------- layer 1: hand-off


@pytest.fixture()
def inputs(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "reach_reward.py").write_text(textwrap.dedent("""
        def score(prompts, completions):
            return [sum(map(ord, c)) / 1000 for c in completions]  # two different completions score differently
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("reach_reward", None)
    prompts = tmp_path / "prompts.jsonl"
    texts = ("the film", "a dull", "i loved", "the cast", "the acting", "a plot", "not the", "hello world")
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts))
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": p, "completion": " was fine"}) + "\n" for p in texts))
    return str(tiny_model_dir), str(prompts), str(demos)


def _config(kind: str, model: str, prompts: str, demos: str, train: dict, sampling: dict) -> dict:
    common = {"model": model, "train": train, "sampling": sampling}
    if kind == "spin":
        return {**common, "data": demos}
    return {**common, "prompts": prompts, "reward": {"type": "callable", "function": "reach_reward:score"}}


@pytest.mark.parametrize("kind", ONLINE)
def test_every_train_and_sampling_setting_reaches_the_loop_and_the_sampler(kind, inputs, tmp_path, monkeypatch):
    import alignlab.rollout.local as local
    from alignlab.stages.online.common import iteration_seed

    seen = {}

    def loop_spy(policy, stage, settings, out, **kwargs):
        seen["train"] = settings
        stage.collect(0)  # the stage's own sampling call, into the sampler spy

    def sampler_spy(model, prompts, settings, **kwargs):
        seen.update(sampling=settings, prompts=len(prompts), seed=kwargs["seed"])
        raise Reached

    # the group algorithms run the loop in policy_gradient.py, SPIN in the pair stages' preference.py
    loop_module = PG if kind in GROUP else PREF if kind == "spin" else STAGE_MODULE[kind]
    monkeypatch.setattr(importlib.import_module(loop_module), "run_online", loop_spy)
    monkeypatch.setattr(local, "sample", sampler_spy)
    if kind == "spin":
        monkeypatch.setattr(importlib.import_module(SPIN), "sample", sampler_spy)
    runtime = Spy(monkeypatch, SPIN if kind == "spin" else COMMON, "runtime")
    critic = Spy(monkeypatch, PPO, "load_critic") if kind == "ppo" else None
    config_cls, run = STAGES[kind].load()
    config = _config(kind, *inputs, TRAIN, SAMPLING)
    if kind == "ppo":  # the default critic is loaded from critic_model
        config["critic_model"] = inputs[0] + "/"
    cfg = config_cls.model_validate(config)
    with pytest.raises(Reached):
        run(cfg, tmp_path / kind)
    for name, value in TRAIN.items():
        assert getattr(seen["train"], name) == value, f"{kind}: train.{name}"
    for name, value in SAMPLING.items():
        assert getattr(seen["sampling"], name) == value, f"{kind}: sampling.{name}"
    k = getattr(cfg, "samples_per_prompt", 2 if kind == "online_dpo" else 1)
    assert seen["prompts"] == TRAIN["prompts_per_iteration"] * k, kind
    assert seen["seed"] == iteration_seed(TRAIN["seed"], 0), kind
    assert runtime.seen("device_name") == [TRAIN["device"]]
    if critic is not None:
        assert critic.seen("name_or_path") == [inputs[0] + "/"]


def _offline_data(kind: str, tmp_path) -> dict:
    prompts = [f"question {i} is" for i in range(10)]
    if kind in ("sft", "pretrain"):
        rows = [{"prompt": p, "completion": " an answer"} for p in prompts]
        if kind == "pretrain":
            rows = [{"text": f"{r['prompt']}{r['completion']} " * 4} for r in rows]
    elif kind in ("dpo", "reward_model"):
        rows = [{"prompt": p, "chosen": " a good one", "rejected": " a bad one"} for p in prompts]
    elif kind == "kto":
        rows = [{"prompt": p, "completion": " fine", "label": i % 2 == 0} for i, p in enumerate(prompts)]
    else:  # prm
        rows = [{"prompt": p, "completions": ["one step", "the answer"], "labels": [True, i % 2 == 0]}
                for i, p in enumerate(prompts)]
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"data": str(path)}


@pytest.mark.parametrize("kind", OFFLINE)
def test_every_train_setting_of_an_offline_stage_reaches_its_loop(kind, tiny_model_dir, tmp_path, monkeypatch):
    loop = Spy(monkeypatch, STAGE_MODULE[kind], "train", stop=True)
    runtime = Spy(monkeypatch, STAGE_MODULE[kind], "runtime")
    config_cls, run = STAGES[kind].load()
    config = {**_offline_data(kind, tmp_path), "train": TRAIN_OFFLINE}
    if kind == "pretrain":
        config.update(vocab_size=300, hidden_size=16, num_heads=2, max_length=32)
    else:
        config["model"] = str(tiny_model_dir)
    with pytest.raises(Reached):
        run(config_cls.model_validate(config), tmp_path / kind)
    (settings,) = loop.seen("settings")
    for name, value in TRAIN_OFFLINE.items():
        assert getattr(settings, name) == value, f"{kind}: train.{name}"
    assert runtime.seen("device_name") == [TRAIN_OFFLINE["device"]]


# --------------------------------------------------------------------------- layer 2: the loops


def _optimizer_spy(monkeypatch, module: str, made: list):
    real = importlib.import_module(module).make_optimizer

    def spy(params, s):
        made.append(real(params, s))
        return made[-1]

    monkeypatch.setattr(importlib.import_module(module), "make_optimizer", spy)


def _optimizer_checks(optimizer, table: dict) -> dict:
    decay = optimizer.param_groups[0]  # biases and gains go without decay
    return {"lr": decay["initial_lr"] == table["lr"], "weight_decay": decay["weight_decay"] == table["weight_decay"],
            "adam_betas": tuple(decay["betas"]) == table["adam_betas"], "adam_eps": decay["eps"] == table["adam_eps"]}


def _clip_spy(monkeypatch) -> list:
    norms, real = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm, *a, **k: norms.append(max_norm)
                        or real(params, max_norm, *a, **k))
    return norms


def _run_toy_online(tmp_path, settings: OnlineSettings, kl: float):
    """run_online on a linear model with 2 minibatches of rows per epoch; returns what was seen."""
    with pytest.MonkeyPatch.context() as monkeypatch:  # each run's spies gone after it
        return _toy_online(tmp_path, monkeypatch, settings, kl)


def _toy_online(tmp_path, monkeypatch, settings: OnlineSettings, kl: float):
    import alignlab.train.online as online

    model, rows = torch.nn.Linear(3, 1), 2 * settings.minibatch_size
    seen = {"collect": [], "micro": [], "lrs": [], "dtypes": set(), "shown": [], "snapshots": [], "made": []}
    _optimizer_spy(monkeypatch, "alignlab.train.engine", seen["made"])
    seen["clip"] = _clip_spy(monkeypatch)
    seen["saved"] = Spy(monkeypatch, "alignlab.train.engine", "save_checkpoint")
    checkpointing = Spy(monkeypatch, "alignlab.train.engine", "use_gradient_checkpointing",
                        substitute={"enabled": False})  # a linear model has nothing to checkpoint
    seen["checkpointing"] = checkpointing

    def collect(iteration):
        seen["collect"].append(iteration)
        x = torch.randn(rows, 3, generator=torch.Generator().manual_seed(iteration))
        return {"x": x, "row": torch.arange(rows)}, {"kl": kl, "reward": 0.0}

    def loss(b):
        seen["micro"].append(b["row"].tolist())
        seen["lrs"].append(seen["made"][-1].param_groups[0]["lr"])
        out = model(b["x"])
        seen["dtypes"].add(out.dtype)
        return out.float().pow(2).mean(), {}

    def shown(n):
        seen["shown"].append(n)
        return [{"prompt": "p", "completion": "c", "reward": 0.0}] * n

    stage = online.OnlineStage(collect, loss, recent_samples=shown, fresh_samples=shown)
    online.run_online(model, stage, settings, tmp_path, device=CPU, expected_samples=rows, name="toy",
                      save_snapshot=lambda d: seen["snapshots"].append(d.name))
    return seen


def _online_loop_checks(tmp_path) -> dict[str, bool]:
    from alignlab.train.online import KLBoundError
    from alignlab.train.schedule import lr_multiplier

    s = OnlineSettings(**TRAIN)
    seen = _run_toy_online(tmp_path / "a", s, kl=0.9 * s.max_kl)
    rows, micro = 2 * s.minibatch_size, s.micro_batch_size
    per_step, steps = s.minibatch_size // micro, s.iterations * s.update_epochs * 2
    epochs = [sum(seen["micro"][i : i + 2 * per_step], []) for i in range(0, len(seen["micro"]), 2 * per_step)]
    total, warmup = steps, int(s.warmup_ratio * steps)
    lrs = seen["lrs"][::per_step]  # one per optimizer step
    logged = [json.loads(x)["step"] for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    samples = (tmp_path / "a" / "samples.jsonl").read_text().splitlines()
    seen_b = _run_toy_online(tmp_path / "b", s.model_copy(update={"seed": s.seed + 1}), kl=0.9 * s.max_kl)
    with pytest.raises(KLBoundError, match=f"max_kl={s.max_kl}"):  # the rollouts' KL past the bound
        _run_toy_online(tmp_path / "c", s, kl=1.1 * s.max_kl)
    return {
        "iterations": seen["collect"] == list(range(s.iterations)),
        "update_epochs": len(epochs) == s.iterations * s.update_epochs and all(sorted(e) == list(range(rows)) for e in epochs),
        "minibatch_size": len(seen["clip"]) == steps,
        "micro_batch_size": all(len(m) == micro for m in seen["micro"]) and len(seen["micro"]) == steps * per_step,
        **_optimizer_checks(seen["made"][0], TRAIN),
        "schedule": lrs == pytest.approx([s.lr * lr_multiplier(i, total, warmup, s.schedule) for i in range(steps)]),
        "warmup_ratio": warmup > 0 and lrs[0] == pytest.approx(s.lr / warmup),
        "max_grad_norm": set(seen["clip"]) == {s.max_grad_norm},
        "seed": seen["micro"][:per_step] != seen_b["micro"][:per_step],  # the first step's rows
        "precision": seen["dtypes"] == {torch.bfloat16},
        "log_every": logged == [2, 3],
        "save_every": seen["saved"].seen("step") == [2, 3],  # iteration 2's start, then the end
        "max_kl": True,  # the pytest.raises above
        "snapshot_every": seen["snapshots"] == ["iter-00002"],
        "gradient_checkpointing": seen["checkpointing"].seen("enabled") == [True],
        "log_samples": seen["shown"] == [s.log_samples] * (s.iterations + 1) and len(samples) == 2 * (s.iterations + 1),
    }


def _run_toy_offline(tmp_path, settings: TrainSettings):
    """alignlab.train.train on a linear model over 12 examples; returns what was seen."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _toy_offline(tmp_path, monkeypatch, settings)


def _toy_offline(tmp_path, monkeypatch, settings: TrainSettings):
    import alignlab.train.loop as loop

    n, model = 12, torch.nn.Linear(3, 1)
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    seen = {"batches": [], "lrs": [], "dtypes": set(), "made": [], "evals": []}
    _optimizer_spy(monkeypatch, "alignlab.train.engine", seen["made"])
    seen["clip"] = _clip_spy(monkeypatch)
    seen["saved"] = Spy(monkeypatch, "alignlab.train.engine", "save_checkpoint")
    seen["grouping"] = Spy(monkeypatch, "alignlab.train.loop", "length_grouped_batches")
    seen["checkpointing"] = Spy(monkeypatch, "alignlab.train.engine", "use_gradient_checkpointing",
                                substitute={"enabled": False})

    def make_batch(idx):
        seen["batches"].append(list(idx))
        return {"x": x[idx]}

    def loss(m, b, normaliser):
        seen["lrs"].append(seen["made"][-1].param_groups[0]["lr"])
        out = m(b["x"])
        seen["dtypes"].add(out.dtype)
        return out.float().pow(2).sum() / normaliser, {}

    fns = loop.StepFns(make_batch, lambda b: torch.tensor(float(len(b["x"]))), loss)
    loop.train(model, list(range(1, n + 1)), fns, settings, tmp_path, device=CPU,
               eval_fn=lambda m: seen["evals"].append(1) or {"score": 0.0}, name="toy")
    return seen


def _offline_loop_checks(tmp_path) -> dict[str, bool]:
    s = TrainSettings(**TRAIN_OFFLINE)
    seen = _run_toy_offline(tmp_path / "a", s)
    per_step = s.batch_size // s.micro_batch_size
    lrs = seen["lrs"][::per_step]
    log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    # without max_steps and warmup_steps: epochs and warmup_ratio decide (12 examples, 3 steps an epoch)
    plain = s.model_copy(update={"max_steps": None, "warmup_steps": None})
    seen_b = _run_toy_offline(tmp_path / "b", plain)
    steps_b = math.ceil(s.epochs * 3)
    warmup_b = int(s.warmup_ratio * steps_b)
    seen_c = _run_toy_offline(tmp_path / "c", plain.model_copy(update={"seed": s.seed + 1}))
    return {
        "max_steps": len(seen["clip"]) == s.max_steps,
        "epochs": len(seen_b["clip"]) == steps_b,
        "batch_size": all(len(sum(seen["batches"][i : i + per_step], [])) == s.batch_size
                          for i in range(0, len(seen["batches"]), per_step)),
        "micro_batch_size": all(len(b) == s.micro_batch_size for b in seen["batches"]),
        **_optimizer_checks(seen["made"][0], TRAIN_OFFLINE),
        # constant after the warmup (a linear or cosine one would fall over run b's last four steps)
        "schedule": seen_b["lrs"][::per_step][warmup_b:] == pytest.approx([s.lr] * (steps_b - warmup_b)),
        "warmup_steps": lrs[: s.warmup_steps] == pytest.approx([s.lr * (i + 1) / s.warmup_steps for i in range(s.warmup_steps)]),
        "warmup_ratio": warmup_b > 0 and seen_b["lrs"][0] == pytest.approx(s.lr / warmup_b),
        "max_grad_norm": set(seen["clip"]) == {s.max_grad_norm},
        "seed": set(seen["grouping"].seen("seed")) == {s.seed} and seen_b["batches"] != seen_c["batches"],
        "group_by_length": set(seen["grouping"].seen("group_multiplier")) == {1},
        "precision": seen["dtypes"] == {torch.bfloat16},
        "log_every": [x["step"] for x in log if "loss" in x] == [2, 3],
        "eval_every": [x["step"] for x in log if "eval/score" in x] == [2, 3] and len(seen["evals"]) == 2,
        "save_every": seen["saved"].seen("step") == [2, 3],
        "gradient_checkpointing": seen["checkpointing"].seen("enabled") == [True],
    }


ONLINE_LOOP_CHECKS = ["iterations", "update_epochs", "minibatch_size", "micro_batch_size", "lr", "weight_decay",
                      "adam_betas", "adam_eps", "schedule", "warmup_ratio", "max_grad_norm", "seed", "precision",
                      "log_every", "save_every", "max_kl", "snapshot_every", "gradient_checkpointing", "log_samples"]
OFFLINE_LOOP_CHECKS = ["max_steps", "epochs", "batch_size", "micro_batch_size", "lr", "weight_decay", "adam_betas",
                       "adam_eps", "schedule", "warmup_steps", "warmup_ratio", "max_grad_norm", "seed",
                       "group_by_length", "precision", "log_every", "eval_every", "save_every",
                       "gradient_checkpointing"]


def test_the_online_loop_uses_every_setting_it_is_handed(tmp_path):
    checks = _online_loop_checks(tmp_path)
    assert sorted(checks) == sorted(ONLINE_LOOP_CHECKS)
    assert [name for name, ok in checks.items() if not ok] == []


def test_the_offline_loop_uses_every_setting_it_is_handed(tmp_path):
    checks = _offline_loop_checks(tmp_path)
    assert sorted(checks) == sorted(OFFLINE_LOOP_CHECKS)
    assert [name for name, ok in checks.items() if not ok] == []


# --------------------------------------------------------------------------- layer 3: own settings

# the functions that compute the trainer's log-probs: each must get the sampling temperature
TRAINER_LOGPS = {"ppo": [(PPO, "logps_from_logits")], "grpo": [(PG, "token_logps")], "rloo": [(PG, "token_logps")],
                 "reinforce_pp": [(PG, "token_logps")], "online_dpo": [(PREF, "token_logps")], "spin": [(PREF, "token_logps")]}
REFERENCE_LOGPS = ("alignlab.models.reference", "token_logps")


def _own(kind: str, model: str) -> dict:
    """The stage's own settings at their test values (a second spelling of the model's directory as ref_model)."""
    spin = {"dtype": "bfloat16", "max_prompt_length": 17, "lora": COMMON_OWN["lora"]}
    common = spin if kind == "spin" else {**COMMON_OWN, "ref_model": model + "/"}
    return {**OWN[kind], **common}


def _matches(seen, own: dict, path: str) -> bool:
    """Whether a consumer saw the configured value of `path` (a block, e.g. lora, as its settings object)."""
    value = own
    for part in path.split("."):
        value = value[part]
    if isinstance(value, dict) and not isinstance(seen, dict):
        return all(getattr(seen, k, None) == v for k, v in value.items())
    return seen == value


@pytest.mark.parametrize("kind", ONLINE)
def test_each_online_stages_own_settings_reach_their_consumers(kind, inputs, tmp_path, monkeypatch):
    own = _own(kind, inputs[0])
    cheap = {"dtype": "float32"}  # the spies see bfloat16; the models load in float32 (quicker on a CPU)
    reach = {**REACH[kind], **(SPIN_COMMON_REACH if kind == "spin" else COMMON_REACH)}
    spies = {}
    for targets in reach.values():
        for module, function, _ in targets:
            if (module, function) not in spies:
                loads = function in ("load_policy", "frozen_reference")
                spies[module, function] = Spy(monkeypatch, module, function, substitute=cheap if loads else None)
    for module, function in [*TRAINER_LOGPS[kind], REFERENCE_LOGPS, (PPO, "masked_whiten"), (PPO, "ValueHead"),
                             (PPO, "load_critic"), (RLOO, "leave_one_out_advantages"), (RPP, "batch_normalised_group_advantages"),
                             (PREF, "preference_objective"),
                             (SPIN, "frozen_reference")]:
        if (module, function) not in spies:
            spies[module, function] = Spy(monkeypatch, module, function,
                                          substitute=cheap if function == "frozen_reference" else None)
    config_cls, run = STAGES[kind].load()
    out = tmp_path / kind
    train = {"iterations": 1, "prompts_per_iteration": 2, "minibatch_size": 2, "update_epochs": 2, "device": "cpu",
             "save_every": None, "keep_checkpoints": True}
    run(config_cls.model_validate({**_config(kind, *inputs, train, {"max_new_tokens": 5, "temperature": 0.7}), **own}),
        out)

    for path, targets in reach.items():
        for module, function, parameter in targets:
            got = spies[module, function].seen(parameter)
            assert got and all(_matches(v, own, path) for v in got), f"{kind}: {path} -> {function}.{parameter}: {got}"
    # the trainer's log-probs, policy and reference alike, at the sampling temperature
    for module, function in [*TRAINER_LOGPS[kind], REFERENCE_LOGPS]:
        got = spies[module, function].seen("temperature")
        assert got and set(got) == {0.7}, f"{kind}: {function} temperatures {set(got)}"
    assert (out / "checkpoints").is_dir()  # train.keep_checkpoints reaches `finish`
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    if kind == "ppo":
        assert len(spies[PPO, "ValueHead"].calls) == 1 and not spies[PPO, "load_critic"].calls  # critic: shared
        # whiten_rewards true, whiten_advantages false: one whitening, of the rewards (no mean shift)
        assert spies[PPO, "masked_whiten"].seen("shift_mean") == [False]
    if kind == "grpo":  # Dr. GRPO's constant is the sampling's max_new_tokens
        assert set(spies[GRPO, "grpo_loss"].seen("max_tokens")) == {5}
    if kind in ("rloo", "reinforce_pp"):  # β reaches the rewards of the baseline: R = r − β·KL
        baseline = (RLOO, "leave_one_out_advantages") if kind == "rloo" else (RPP, "batch_normalised_group_advantages")
        rewards = torch.cat(spies[baseline].seen("rewards"))
        # the log holds float32 means of the same rewards and KLs, summed in another order: 1e-5 relative
        assert float(rewards.mean()) == pytest.approx(log[0]["reward"] - own["beta"] * log[0]["kl"], rel=1e-5)
    if kind in ("online_dpo", "spin"):
        objective = spies[PREF, "preference_objective"]
        assert all(terms == [(own["loss"], 1.0)] for terms in objective.seen("terms"))
        assert {(s.beta, s.label_smoothing) for s in objective.seen("s")} == {(own["beta"], own["label_smoothing"])}
    if kind == "spin":  # reference: initial loads the starting model as a frozen copy
        assert spies[SPIN, "frozen_reference"].seen("ref_path") == [inputs[0]]


@pytest.mark.parametrize("kind", GROUP)
def test_without_track_kl_no_reference_is_loaded(kind, inputs, tmp_path, monkeypatch):
    reference = Spy(monkeypatch, COMMON, "frozen_reference")
    config_cls, run = STAGES[kind].load()
    train = {"iterations": 1, "prompts_per_iteration": 2, "minibatch_size": 8, "device": "cpu"}
    config = {**_config(kind, *inputs, train, {"max_new_tokens": 4}), "beta": 0.0, "track_kl": False}
    run(config_cls.model_validate(config), tmp_path / kind)
    log = [json.loads(x) for x in (tmp_path / kind / "log.jsonl").read_text().splitlines()]
    assert not reference.calls and "kl" not in log[0]


def test_a_partial_block_keeps_the_stages_own_defaults():
    # PPO declares train.update_epochs 4: setting only the learning rate must not reset it to the block's 1
    from alignlab.stages.online.ppo import PPOConfig

    base = {"model": "m", "prompts": "p", "reward": {"type": "gold", "task": "sentiment"}}
    assert PPOConfig.model_validate({**base, "train": {"lr": 1e-5}}).train.update_epochs == 4
    assert PPOConfig.model_validate({**base, "train": {"update_epochs": 2}}).train.update_epochs == 2
    assert PPOConfig.model_validate({**base, "train": OnlineSettings(lr=1e-5)}).train.update_epochs == 4
    # SL-CAI declares sampling.max_new_tokens 128: setting only the temperature keeps it
    config_cls, _ = STAGES["sl_cai"].load()
    cfg = config_cls.model_validate({"policy": "m", "prompts": "p", "feedback": {"type": "local", "path": "m"},
                                     "sampling": {"temperature": 0.5}})
    assert cfg.sampling.max_new_tokens == 128 and cfg.sampling.temperature == 0.5


@pytest.mark.parametrize("kind", ["ppo", *GROUP])
def test_the_old_top_level_update_epochs_says_where_it_lives(kind):
    from pydantic import ValidationError

    config_cls, _ = STAGES[kind].load()
    with pytest.raises(ValidationError, match="train.update_epochs"):
        config_cls.model_validate({"model": "m", "prompts": "p", "reward": {"type": "gold", "task": "sentiment"},
                                   "update_epochs": 2})
