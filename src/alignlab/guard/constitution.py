"""Classifier constitutions: what content is restricted and what is allowed, for training
constitutional classifiers (after Sharma et al. 2025, "Constitutional Classifiers").

A classifier constitution is a YAML file (`constitutions/default.yaml` is alignlab's own)::

    name: my-classifier-constitution
    restricted:                      # content the classifiers must catch
      - name: weapons
        description: instructions for making or using weapons capable of killing people
        examples: ["How do I make a pipe bomb?", ...]
    allowed:                         # content that must pass, harmless look-alikes included
      - name: safety_information
        description: how to stay safe around chemicals, tools and electricity
        lookalike: true              # benign-but-scary: shares words with restricted requests
        examples: ["Which cleaning products are dangerous to mix?", ...]
    requests:                        # optional: how a generator LLM is asked (defaults below)
      prompt: "... {category} ... {description} ... {examples} ..."
      restricted_response: "{prompt}"
      allowed_response: "{prompt}"

Each category's examples seed the generator (and become labelled data themselves). The requests
are user messages sent in chat format; `{prompt}` in a response request is the generated prompt.
`load_classifier_constitution("default")` loads the built-in one; any other value is a path.
Errors name the file, the line and the field.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alignlab.data.yaml_lines import load_yaml_model

BUILT_IN = Path(__file__).parent / "constitutions"

PROMPT_REQUEST = (
    "Write one message that a user might send to an AI assistant. Topic: {category}: {description}.\n"
    "Examples of such messages:\n{examples}\n"
    "Write one new message on this topic, different from the examples. Reply with the message only."
)
#: the fields each request may use; anything else in braces is an error in the file
PLACEHOLDERS = {"prompt": {"category", "description", "examples"},
                "restricted_response": {"prompt", "category", "description"},
                "allowed_response": {"prompt", "category", "description"}}


class Requests(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(PROMPT_REQUEST, min_length=10, description="asks the generator for one user message")
    restricted_response: str = Field("{prompt}", description="asks for a response to a restricted prompt")
    allowed_response: str = Field("{prompt}", description="asks for a response to an allowed prompt")

    @model_validator(mode="after")
    def _known_placeholders(self) -> "Requests":
        for name, allowed in PLACEHOLDERS.items():
            used = {field for _, field, _, _ in string.Formatter().parse(getattr(self, name)) if field is not None}
            unknown = sorted(used - allowed)
            if unknown:
                raise ValueError(f"{name}: unknown placeholder {{{unknown[0]}}}; it may use "
                                 + ", ".join(f"{{{a}}}" for a in sorted(allowed)))
            if name != "prompt" and "prompt" not in used:
                raise ValueError(f"{name}: must contain {{prompt}} (the generated prompt to respond to)")
        return self


class Category(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str = Field(min_length=10)
    examples: list[str] = Field(min_length=1, description="user messages of this category")
    lookalike: bool = Field(False, description="allowed content that sounds harmful (benign-but-scary)")

    @field_validator("examples")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        for i, example in enumerate(value):
            if not example.strip():
                raise ValueError(f"example {i} is empty")
        return [e.strip() for e in value]


class ClassifierConstitution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    restricted: list[Category] = Field(min_length=1)
    allowed: list[Category] = Field(min_length=1)
    requests: Requests = Requests()

    @model_validator(mode="after")
    def _consistent(self) -> "ClassifierConstitution":
        names = [c.name for c in self.restricted + self.allowed]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"category names must be unique across restricted and allowed; repeated: {', '.join(repeated)}")
        for i, category in enumerate(self.restricted):
            if category.lookalike:
                raise ValueError(f"restricted.{i}.lookalike: only allowed content can be a harmless look-alike")
        return self

    def categories(self) -> list[tuple[Literal["restricted", "allowed"], Category]]:
        """Every category with its kind, restricted first, in file order."""
        return [("restricted", c) for c in self.restricted] + [("allowed", c) for c in self.allowed]


def load_classifier_constitution(name_or_path: str | Path = "default") -> ClassifierConstitution:
    """The built-in classifier constitution by name ("default"), or a YAML file, validated."""
    return load_yaml_model(name_or_path, BUILT_IN, ClassifierConstitution,
                           missing="classifier constitution not found (use 'default' or a YAML path)",
                           shape="a classifier constitution is a mapping with `name`, `restricted` and `allowed`")
