"""`guard:` in a stage's settings: which classifiers guard the policy's sampling, and their thresholds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alignlab.guard.sampler import REFUSAL_MESSAGE, Guard


class GuardSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | None = Field(None, description="input classifier directory (a classifier stage's model/); None: off")
    output: str | None = Field(None, description="streaming output classifier directory; None: off")
    input_threshold: float = Field(0.5, ge=0, description="a prompt scoring at or above this is refused")
    output_threshold: float = Field(0.5, ge=0, description="generation stops at the first token scoring at or above this")
    message: str = Field(REFUSAL_MESSAGE, min_length=1, description="what a refused or stopped request is answered")

    @model_validator(mode="after")
    def _something_guards(self) -> "GuardSettings":
        if self.input is None and self.output is None:
            raise ValueError("a guard needs an `input` or an `output` classifier (or both)")
        return self

    def build(self, tokenizer, device) -> Guard:
        """The guard with its classifiers loaded on `device`; they must share the policy's tokenizer."""
        from alignlab.guard.models import load_input_classifier, load_output_classifier
        from alignlab.models import load_tokenizer

        models = {}
        loaders = (("input", self.input, load_input_classifier), ("output", self.output, load_output_classifier))
        for name, path, load in loaders:
            if path is None:
                continue
            check_same_vocabulary(tokenizer, load_tokenizer(path), f"guard.{name}")
            models[name] = load(path, tokenizer, device=device)
        return Guard(input=models.get("input"), output=models.get("output"), input_threshold=self.input_threshold,
                     output_threshold=self.output_threshold, message=self.message)


def check_same_vocabulary(policy_tokenizer, classifier_tokenizer, where: str) -> None:
    """The guard scores the policy's own token ids, so a classifier must read them as the policy does."""
    if policy_tokenizer.get_vocab() != classifier_tokenizer.get_vocab():
        raise ValueError(f"{where}: the classifier's tokenizer differs from the policy's; train the classifiers "
                         "from the policy's base model (or one with the same tokenizer)")


class RolloutGuardSettings(GuardSettings):
    """`guard:` on an online stage: the policy samples its rollouts behind the classifiers."""

    halted_reward: float | None = Field(
        None, description="the reward of a rollout the output classifier halted (it ends at the flagged token, so "
        "a penalty pushes that token down); None: the reward source scores the halted rollout as it stands")
