"""Constitutions: written principles that steer AI feedback (Bai et al. 2022, "Constitutional AI").

A constitution is a YAML file (see `constitutions/default.yaml`, alignlab's own):

    name: my-constitution
    principles:
      - name: honesty
        critique_request: List any claims in the response that are false ...
        revision_request: Rewrite the response so that every claim is accurate ...
        comparison: Which response is more truthful ...?
        follow: Always tell the truth ...      # optional: contrast labels (`contrast_labels`)
        violate: Say whatever pleases ...
    examples:            # optional few-shot demonstrations for critique -> revision
      - prompt: ...
        response: ...
        principle: honesty
        critique: ...
        revision: ...

Each principle is used three ways: its critique and revision requests drive SL-CAI, its
comparison question drives AI preference labels (RLAIF). `load_constitution("default")` loads
the built-in one; any other value is a path. Errors name the file, the line and the field.
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alignlab.data.yaml_lines import load_yaml_model

BUILT_IN = Path(__file__).parent / "constitutions"


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    topic: str | None = None
    critique_request: str = Field(min_length=10)
    revision_request: str = Field(min_length=10)
    comparison: str = Field(min_length=10, description="a question answered by choosing (A) or (B)")
    follow: str | None = Field(None, min_length=10, description="system message of an assistant that keeps the "
                               "principle (contrast labels)")
    violate: str | None = Field(None, min_length=10, description="system message of an assistant that breaks it")

    @field_validator("comparison")
    @classmethod
    def _is_question(cls, value: str) -> str:
        if not value.rstrip().endswith("?"):
            raise ValueError("must be a question (end with '?'): it is asked about two responses")
        return value.strip()


class Example(BaseModel):
    """A worked critique → revision, shown to the feedback model to keep it in role."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    principle: str
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    principles: list[Principle] = Field(min_length=1)
    examples: list[Example] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "Constitution":
        names = [p.name for p in self.principles]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"principle names must be unique; repeated: {', '.join(repeated)}")
        for i, example in enumerate(self.examples):
            if example.principle not in names:
                raise ValueError(f"examples.{i}.principle: {example.principle!r} is not a principle of this constitution")
        return self

    def principle(self, name: str) -> Principle:
        for p in self.principles:
            if p.name == name:
                return p
        raise KeyError(f"no principle {name!r} in constitution {self.name!r}")

    def draw(self, rng: random.Random) -> Principle:
        """One principle, uniformly at random (a fresh draw per critique round, as in the paper)."""
        return rng.choice(self.principles)


def load_constitution(name_or_path: str | Path = "default") -> Constitution:
    """The built-in constitution by name ("default"), or a YAML file, validated."""
    return load_yaml_model(name_or_path, BUILT_IN, Constitution,
                           missing="constitution file not found (use 'default' or a YAML path)",
                           shape="a constitution is a mapping with `name` and `principles`")
