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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alignlab.data.errors import DataError, Source
from alignlab.data.yaml_lines import read_yaml_mapping, yaml_line

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
    path = Path(name_or_path)
    if not path.suffix and (BUILT_IN / f"{name_or_path}.yaml").exists():
        path = BUILT_IN / f"{name_or_path}.yaml"
    if not path.exists():
        raise DataError(Source(str(path)), None, "classifier constitution not found (use 'default' or a YAML path)")
    node, data = read_yaml_mapping(path, "a classifier constitution is a mapping with `name`, `restricted` and `allowed`")
    try:
        return ClassifierConstitution.model_validate(data)
    except ValidationError as err:
        field, message = _where(err.errors()[0])
        loc = tuple(int(p) if p.isdigit() else p for p in field.split(".")) if field else ()
        raise DataError(Source(str(path), yaml_line(node, loc)), field, message) from None


def _where(error: dict) -> tuple[str | None, str]:
    """(dotted field, message) of a pydantic error; a whole-model check names its field in its
    message ("restricted.0.lookalike: ...", or "restricted_response: ..." inside `requests`)."""
    loc = [str(p) for p in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return ".".join(loc), "unknown key"
    if error["type"] == "value_error" and ": " in message:
        head, _, rest = message.partition(": ")
        if " " not in head:  # a field path, not a sentence
            return ".".join([*loc, head]), rest
    return (".".join(loc) or None), message
