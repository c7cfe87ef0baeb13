"""Where a key sits in a YAML file, so a config error can name its line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from alignlab.data.errors import DataError, Source

Model = TypeVar("Model", bound=BaseModel)


def read_yaml_mapping(path: Path, shape: str) -> tuple[yaml.Node, dict]:
    """(the node tree, for `yaml_line`; the data) of a YAML file that must hold one mapping: a YAML
    error names its line, anything else is refused with `shape`, which says what the file should be."""
    text = path.read_text(encoding="utf-8")
    try:
        node, data = yaml.compose(text), yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise DataError(Source(str(path), mark.line + 1 if mark else None), None, f"not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise DataError(Source(str(path)), None, shape)
    return node, data


def load_yaml_model(name_or_path: str | Path, built_in: Path, model: type[Model], *, missing: str,
                    shape: str) -> Model:
    """A YAML file validated as `model`: a built-in one by name (`built_in/<name>.yaml`) or a path.
    A missing file is refused with `missing`, a non-mapping with `shape`, and the first validation
    error names the file, its line and the field."""
    path = Path(name_or_path)
    if not path.suffix and (built_in / f"{name_or_path}.yaml").exists():
        path = built_in / f"{name_or_path}.yaml"
    if not path.exists():
        raise DataError(Source(str(path)), None, missing)
    node, data = read_yaml_mapping(path, shape)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        field, message = validation_field(err.errors()[0])
        loc = tuple(int(p) if p.isdigit() else p for p in field.split(".")) if field else ()
        raise DataError(Source(str(path), yaml_line(node, loc)), field, message) from None


def validation_field(error: dict) -> tuple[str | None, str]:
    """(dotted field, message) of a pydantic error; a whole-model check names its field in its
    message ("restricted.0.lookalike: ..."), a sentence before a colon is no field ("names must be
    unique; repeated: x")."""
    loc = [str(p) for p in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return ".".join(loc), "unknown key"
    if error["type"] == "value_error" and ": " in message:
        head, _, rest = message.partition(": ")
        if " " not in head:  # a field path, not a sentence
            return ".".join([*loc, head]), rest
    return (".".join(loc) or None), message


def yaml_line(node: yaml.Node | None, path: tuple) -> int | None:
    """1-based line of the YAML node at `path` (keys / list indexes), as deep as it exists."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(part)]
            if not match:
                break
            node = match[0][1]
            line = match[0][0].start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def data_location(data: Any, loc: tuple) -> tuple:
    """Pydantic's error location with the tags of tagged unions (e.g. `term`, `gold`) left out,
    so it names keys as they are written in the YAML (`reward.0.bogus`)."""
    kept, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(node, (dict, list)) and i < len(loc) - 1:
            continue  # a union tag: not a key of the data (the last part may be a missing key)
        kept.append(part)
    return tuple(kept)
