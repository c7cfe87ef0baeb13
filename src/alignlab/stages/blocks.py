"""The settings blocks stage configs are made of. Each shared knob is declared here once, with one
validation and one default; a stage composes the blocks it uses (they stay flat in a recipe:
`model:`, `max_length:`, not `policy.model:`), and a stage whose knob needs another default says
so in its `stage_defaults` (`EvaluationSeedSettings`: evaluation samples with seed 1234, apart
from training's 0)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from alignlab.guard.settings import GuardSettings
from alignlab.models import LoraSettings
from alignlab.stages.common import StageConfig
from alignlab.train.settings import SeedSettings

__all__ = ["AdapterSettings", "DtypeSettings", "EvalDataSettings", "EvalFractionSettings", "EvaluationSeedSettings",
           "GuardedSamplingSettings", "HeldOutSettings", "LengthSettings", "MaxLengthSettings", "ModelSettings", "PolicySettings",
           "PromptLengthSettings", "SeedSettings"]


class ModelSettings(StageConfig):
    model: str = Field(description="hub id or local directory of a causal LM")


class DtypeSettings(StageConfig):
    dtype: str = Field("float32", description="weights' dtype: float32, bfloat16 or float16")


class AdapterSettings(StageConfig):
    lora: LoraSettings | None = Field(None, description="train LoRA adapters instead of every weight")


class PromptLengthSettings(StageConfig):
    max_prompt_length: int = Field(256, gt=0, description="longest prompt in tokens (longer prompts are cut)")


class MaxLengthSettings(StageConfig):
    max_length: int | None = Field(
        None, gt=0, description="longest prompt + response in tokens; default: 512, or the model's position limit if smaller")


class LengthSettings(MaxLengthSettings, PromptLengthSettings):
    """How long a row and its prompt may be."""


class PolicySettings(ModelSettings, DtypeSettings, AdapterSettings, LengthSettings):
    """A trained policy: where it starts, its precision, its adapters and its lengths."""


EVALUATION_SEED = 1234


class EvaluationSeedSettings(StageConfig, SeedSettings):
    """The seed of a stage that samples to evaluate: apart from training's (0), so the evaluation's
    samples are not the ones a training stage drew with the same seed."""

    stage_defaults: ClassVar[dict[str, Any]] = {"seed": EVALUATION_SEED}


class GuardedSamplingSettings(StageConfig):
    guard: GuardSettings | None = Field(None, description="sample behind constitutional classifiers (input and/or output)")


class EvalDataSettings(StageConfig):
    eval_data: str | None = Field(None, description="held-out data, in the training data's format")


class EvalFractionSettings(StageConfig):
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share held out (by prompt) when no eval_data is given")


class HeldOutSettings(EvalDataSettings, EvalFractionSettings):
    """Held-out data from a file, or else a seeded fraction of the training data."""
