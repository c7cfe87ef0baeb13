"""Reward specs in recipes: one term or a weighted list, validated, and built into a source.

    reward:
      - {type: reward_model, path: "@reward_model/model"}
      - {type: missing_eos, penalty: -1.0}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
)
from transformers import PreTrainedTokenizerBase

from alignlab.feedback.rewards.sources import (
    CallableSource,
    GoldSource,
    RewardModelSource,
    RewardSource,
    WeightedSum,
    check_function_spec,
)
from alignlab.feedback.rewards.rules import LengthPenalty, MissingEOSPenalty
from alignlab.feedback.rewards.step_scores import ProcessRewardSource
from alignlab.tasks import TaskSpec, get_task


class _Term(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, allow_inf_nan=False, description="multiplies this term in the sum")


class RewardModelTerm(_Term):
    type: Literal["reward_model"]
    path: str = Field(min_length=1, description="a reward model directory or hub id (e.g. '@reward_model/model')")
    batch_size: int = Field(64, gt=0)


class GoldTerm(_Term):
    type: Literal["gold"]
    task: TaskSpec = Field(description="a built-in task name (alignlab.tasks.TASKS), or {name: ..., options}")

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: TaskSpec) -> TaskSpec:
        get_task(value)  # a ValueError naming the unknown task or option, at config time
        return value


class CallableTerm(_Term):
    type: Literal["callable"]
    function: str = Field(description="'package.module:function', called as fn(prompts, completions)")

    @field_validator("function")
    @classmethod
    def _spec_format(cls, value: str) -> str:
        return check_function_spec(value)


class ProcessRewardTerm(_Term):
    type: Literal["prm"]
    path: str = Field(min_length=1, description="a process reward model directory (the prm stage's model)")
    aggregate: Literal["prod", "min", "last"] = Field("prod", description="how step scores make one reward")
    separator: str = Field("\n", description="what ends a step in the completion")
    max_length: int = Field(512, gt=0)


class LengthPenaltyTerm(_Term):
    type: Literal["length_penalty"]
    target_tokens: int = Field(ge=0)
    per_token: float = Field(ge=0, allow_inf_nan=False)


class MissingEOSTerm(_Term):
    type: Literal["missing_eos"]
    penalty: float = Field(-1.0, allow_inf_nan=False)


RewardTerm = Annotated[
    RewardModelTerm | GoldTerm | CallableTerm | ProcessRewardTerm | LengthPenaltyTerm | MissingEOSTerm,
    Field(discriminator="type"),
]

# One term, or a non-empty list of terms (summed with their weights). The callable discriminator
# sends a value to exactly one branch, so an error reports that branch only.
RewardSpec = Annotated[
    Annotated[RewardTerm, Tag("term")] | Annotated[list[RewardTerm], Field(min_length=1), Tag("terms")],
    Discriminator(lambda value: "terms" if isinstance(value, list) else "term"),
]

_SPEC_ADAPTER: TypeAdapter = TypeAdapter(RewardSpec)


def parse_reward_spec(value: Any) -> Any:
    """Validate a reward spec given as plain data (a dict or a list of dicts, e.g. from YAML)."""
    return _SPEC_ADAPTER.validate_python(value)


def build_reward(
    spec: Any,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: str | torch.device | None = None,
) -> RewardSource:
    """The reward source a spec describes: a list → WeightedSum; one term → that source (weighted if weight ≠ 1).

    `spec` may be parsed terms or plain data. `tokenizer` (and `device`) are needed by reward-model terms.
    """
    if not isinstance(spec, (_Term, list)) or (isinstance(spec, list) and not all(isinstance(t, _Term) for t in spec)):
        spec = parse_reward_spec(spec)
    if isinstance(spec, list):
        if not spec:
            raise ValueError("a reward spec list needs at least one term")
        return WeightedSum([(_build_term(term, tokenizer, device), term.weight) for term in spec])
    source = _build_term(spec, tokenizer, device)
    return source if spec.weight == 1.0 else WeightedSum([(source, spec.weight)])


def _build_term(term: _Term, tokenizer: PreTrainedTokenizerBase | None, device: Any) -> RewardSource:
    if isinstance(term, RewardModelTerm):
        if tokenizer is None:
            raise ValueError(f"reward_model term {term.path!r} needs the policy's tokenizer; pass tokenizer=")
        return RewardModelSource(term.path, tokenizer, device=device, batch_size=term.batch_size)
    if isinstance(term, GoldTerm):
        return GoldSource(term.task)
    if isinstance(term, CallableTerm):
        return CallableSource(term.function)
    if isinstance(term, ProcessRewardTerm):
        return ProcessRewardSource(term.path, device=device, aggregate=term.aggregate, separator=term.separator,
                                   max_length=term.max_length)
    if isinstance(term, LengthPenaltyTerm):
        return LengthPenalty(term.target_tokens, term.per_token)
    if isinstance(term, MissingEOSTerm):
        return MissingEOSPenalty(term.penalty)
    raise TypeError(f"not a reward term: {term!r}")


def single_reward_model_path(spec: Any) -> str | None:
    """The reward model's path when the spec is exactly one reward-model term (a PPO critic starts there)."""
    terms = spec if isinstance(spec, list) else [spec]
    models = [t.path for t in terms if isinstance(t, RewardModelTerm)]
    return models[0] if len(models) == 1 else None
