"""Recipes: YAML files naming stages in order. Everything is validated before any work starts.

    name: quickstart
    stages:
      sft:                      # stage name = its directory under the run; type defaults to the name
        model: "@pretrain/model"   # "@stage[/path]" = an earlier stage's directory (or a file in it)
        data: "@task/data/sft.jsonl"
      dpo: {type: dpo, model: "@sft/model", data: "@pairs/data/train.jsonl"}

Errors name the file, the line and the key: unknown keys, wrong types, unknown stage types and
references to stages that do not come earlier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alignlab.data.yaml_lines import data_location, yaml_line
from alignlab.stages import STAGES
from alignlab.stages.common import StageConfig

REF = re.compile(r"^@([A-Za-z0-9_.-]+)(/.*)?$")
TOP_KEYS = {"name", "description", "stages"}


class RecipeError(ValueError):
    pass


class BadReference(RecipeError):
    """A "@stage" reference to a stage that does not come earlier; `key` locates it in the settings."""

    def __init__(self, message: str, key: tuple):
        super().__init__(message)
        self.key = key


@dataclass
class PlannedStage:
    name: str
    type: str
    config: StageConfig
    run: Any
    depends_on: list[str]


def describe_error(err: dict) -> str:
    """One pydantic error as `key: message`, with unknown keys called what they are."""
    key = ".".join(map(str, err["loc"])) or "settings"
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    return f"{key}: {err['msg']}"


def resolve_refs(
    value: Any, run_dir: Path, earlier: set[str], where: str, refs: list[str], key: tuple = ()
) -> Any:
    """Replace "@stage[/path]" strings by paths under `run_dir`; the stage must come earlier.

    `key` is the path of `value` inside the stage's settings, so an error can name the key."""
    if isinstance(value, dict):
        return {k: resolve_refs(v, run_dir, earlier, where, refs, (*key, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, run_dir, earlier, where, refs, (*key, i)) for i, v in enumerate(value)]
    if isinstance(value, str) and (m := REF.match(value)):
        stage, rest = m.group(1), m.group(2) or ""
        if stage not in earlier:
            raise BadReference(
                f"{where}: key {'.'.join(map(str, key))!r}: {value!r} refers to stage {stage!r}, "
                "which does not come earlier in the recipe", key,
            )
        refs.append(stage)
        return str(run_dir / stage) + rest
    return value


def load_recipe(path: str | Path, run_dir: Path | None = None) -> tuple[str, Path, list[PlannedStage]]:
    """Parse and validate a recipe; returns (name, run directory, stages in order)."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with `name` and `stages`")
    for key in data:
        if key not in TOP_KEYS:
            raise RecipeError(f"{path}: line {yaml_line(root, (key,))}: unknown key {key!r} (expected {sorted(TOP_KEYS)})")
    name = str(data.get("name") or path.stem)
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise RecipeError(f"{path}: `stages` must be a non-empty mapping of stage name -> settings")
    run_dir = run_dir or Path("runs") / name
    planned: list[PlannedStage] = []
    for stage_name, settings in stages.items():
        where = f"{path}: line {yaml_line(root, ('stages', stage_name))}: stage {stage_name!r}"
        settings = dict(settings or {})
        kind = settings.pop("type", stage_name)
        if kind not in STAGES:
            raise RecipeError(f"{where}: unknown stage type {kind!r}; known: {', '.join(STAGES)}")
        refs: list[str] = []
        try:
            earlier = {p.name for p in planned}
            settings = resolve_refs(settings, run_dir, earlier, f"stage {stage_name!r}", refs)
        except BadReference as e:  # point at the key's own line, not the stage's
            raise RecipeError(f"{path}: line {yaml_line(root, ('stages', stage_name, *e.key))}: {e}") from None
        config_cls, run = STAGES[kind].load()
        try:
            config = config_cls.model_validate(settings)
        except ValidationError as e:
            err = e.errors()[0]
            loc = data_location(settings, tuple(err["loc"]))
            err = {**err, "loc": loc}
            line = yaml_line(root, ("stages", stage_name, *loc))
            raise RecipeError(f"{path}: line {line}: stage {stage_name!r}: {describe_error(err)}") from None
        planned.append(PlannedStage(stage_name, kind, config, run, refs))
    return name, run_dir, planned
