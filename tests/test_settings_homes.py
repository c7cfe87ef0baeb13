"""One home per setting: a knob that several stages share is declared once (in `stages/blocks.py`
or `train/settings.py`), so it cannot drift into two defaults or two validations.

The walk covers every stage config and every settings block nested in one. A name declared in
more than one class must be declared identically (type, default, constraints), unless it is one
of the homonyms below: the same word for different things, each with the reason."""

from __future__ import annotations

import dataclasses
import typing
from collections import defaultdict

import pytest
from pydantic import BaseModel

from alignlab.pipeline.recipe import STAGES
from alignlab.stages.blocks import PolicySettings
from alignlab.stages.common import StageConfig

HOMONYMS = {
    "type": "each spec kind's own discriminator value",
    "title": "the report's heading and the frontier plot's",
    "baseline": "the frontier must draw a baseline; the report takes the evaluate stage's first model when unset",
    "beta": "a different coefficient in each family: DPO's inverse temperature (default per objective), KTO's, "
            "the RL KL penalty (PPO/RLOO in the reward, GRPO's k3 term in the loss)",
    "gamma": "SimPO's target margin in DPO; the GAE discount in PPO",
    "guard": "an evaluation's classifiers and thresholds; an online stage's add the reward of a halted rollout",
    "rounds": "rejection-sampling rounds (train and sample again); SL-CAI's critique-revision rounds",
    "reference": "SPIN's choice of reference policy; the evaluate stage's KL anchor model",
    "policy": "SL-CAI needs the policy that answers; AI labelling may read pairs from a file instead",
    "max_steps": "the offline loop's optimizer steps; beam search's reasoning steps",
    "max_new_tokens": "a whole sampled answer; one beam-search step",
    "threshold": "rollout correction's importance-weight cap (above 1); a hacking monitor's limit on its figure; "
                 "a guard classifier's score limit",
    "temperature": "policy sampling (1.0); a feedback LLM's judging generation (greedy by default)",
    "batch_size": "training examples per optimizer step; prompts per generate call; texts per judge or "
                  "reward-model forward",
    "samples_per_prompt": "each stage's core size with its own minimum: pairs need 2, step labels draw 8 "
                          "rollouts, evaluation 1",
    "model": "a hub id or directory everywhere, except an OpenAI-compatible server's model name (non-empty)",
    "device": "a stage's device; a local feedback LLM's (unset: the stage's)",
    "data": "required by the stages that train on it; optional for pretraining (a task can supply the corpus)",
    "task": "required where the stage samples or scores a task; optional where a file can stand in",
    "prompts": "required by sampling stages; optional for AI labelling of existing pairs",
    "aggregation": "GRPO's paper averages per sequence; RLOO's sums (the loss function is shared)",
    "schedule": "offline training decays the rate (linear); online RL keeps it constant by default",
    "save_every": "steps in offline training; iterations in online training",
    "aggregate": "a process reward's score of a whole solution (product of step scores); beam search's "
                 "ranking of partial solutions (the last step's score)",
    "loss": "offline DPO takes every preference objective or a weighted list; the online pair stages take "
            "the reference-based pairwise ones",
    "cache": "a feedback LLM's answer cache file; the sampler's KV-cache kind",
    "max_length": "a loaded model's row cap everywhere, except pretraining's, where it builds the model's "
                  "context (a required size, 96 by default)",
}


def _blocks(annotation) -> list[type]:
    """The settings classes an annotation holds (`Block`, `Block | None`, `list[Block]`, unions)."""
    if isinstance(annotation, type) and (issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)):
        return [annotation]
    return [b for arg in typing.get_args(annotation) for b in _blocks(arg)]


def _settings_classes() -> set[type]:
    seen: set[type] = set()
    todo = [STAGES[name].load()[0] for name in STAGES]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if issubclass(cls, BaseModel):
            todo += [b for f in cls.model_fields.values() for b in _blocks(f.annotation)]
            todo += [base for base in cls.__mro__[1:] if isinstance(base, type) and issubclass(base, BaseModel)
                     and base not in (BaseModel, StageConfig)]
    return {c for c in seen if issubclass(c, BaseModel)}


def _declarations() -> dict[str, list[tuple[str, str]]]:
    """name -> [(class, its declaration)] for every field a class declares itself (not inherits)."""
    out = defaultdict(list)
    for cls in _settings_classes():
        for name in cls.__dict__.get("__annotations__", {}):
            field = cls.model_fields.get(name)
            if field is None:
                continue
            if _blocks(field.annotation) and isinstance(field.default, BaseModel):
                continue  # a block: its defaults are an instance of a class walked on its own
            out[name].append((f"{cls.__module__}.{cls.__name__}",
                              f"{field.annotation!r} = {field.default!r} {field.metadata!r}"))
    return out


def test_no_shared_knob_is_declared_twice_differently():
    differing = {}
    for name, places in _declarations().items():
        if name in HOMONYMS or len({d for _, d in places}) < 2:
            continue
        differing[name] = sorted(places)
    assert not differing, "declare these once, in stages/blocks.py, and use stage_defaults:\n" + "\n".join(
        f"{name}: " + "; ".join(f"{cls}: {d}" for cls, d in places) for name, places in differing.items())


def test_the_homonym_list_names_only_real_homonyms():
    """A homonym that is no longer declared differently must leave the list (it hides nothing)."""
    declared = _declarations()
    for name in HOMONYMS:
        assert len({d for _, d in declared.get(name, [])}) > 1, f"{name} is declared once now: drop it from HOMONYMS"


@pytest.mark.parametrize("name", ["model", "dtype", "lora", "max_length", "max_prompt_length", "seed",
                                  "eval_data", "eval_fraction"])
def test_the_policy_knobs_live_in_one_block_class(name):
    homes = {cls for cls, _ in _declarations()[name] if cls.startswith(("alignlab.stages.blocks", "alignlab.train.settings"))}
    others = {cls for cls, _ in _declarations()[name]} - homes
    assert len(homes) == 1, homes
    # the feedback layer sits below stages/ and cannot import its blocks: its specs declare their own
    allowed = {"model": {"alignlab.feedback.ai.llm_spec.OpenAILLMSpec"},
               "dtype": {"alignlab.feedback.ai.llm_spec.LocalLLMSpec"},
               "max_length": {"alignlab.stages.offline.pretrain.PretrainConfig", "alignlab.feedback.rewards.config.ProcessRewardTerm"}}
    assert others <= allowed.get(name, set()), others


def test_a_stage_default_is_applied_and_shown(tiny_model_dir):
    from alignlab.pipeline.settings_help import settings_lines
    from alignlab.stages.evaluation.evaluate import EvaluateConfig

    config = EvaluateConfig(models={"a": str(tiny_model_dir)}, prompts="p.jsonl", task="sentiment")
    assert config.seed == 1234 and EvaluateConfig.model_fields["seed"].default == 0
    assert EvaluateConfig(models={"a": "x"}, prompts="p.jsonl", task="sentiment", seed=7).seed == 7
    assert "--seed INT (default 1234)" in "\n".join(settings_lines(EvaluateConfig))
    assert PolicySettings.model_fields["max_prompt_length"].default == 256
