"""Every setting of a stage as one `--key TYPE (default value): description` line, nested keys included.

`alignlab STAGE --help` prints these, so a user sees `--train.lr FLOAT (default 1e-05)` and LoRA's
`--lora.r INT (default 16)` instead of a Python repr of the nested settings object.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel

SCALARS = {int: "INT", float: "FLOAT", str: "TEXT", bool: "BOOL", Path: "PATH"}


def settings_lines(cls: type, prefix: str = "", instance: Any = None) -> list[str]:
    """One line per leaf setting of a pydantic model or dataclass, nested settings expanded. With
    `instance`, its values are the defaults shown: a stage may declare a block with defaults of its
    own (SL-CAI's sampling block has max_new_tokens 128, the block's class 48)."""
    lines = []
    for name, annotation, default, description in _fields(cls):
        if instance is not None:
            default = getattr(instance, name)
        key = f"{prefix}{name}"
        nested = _settings_class(annotation)
        if nested is not None:
            if default is None:
                lines.append(f"--{key} (off unless one of its keys is set){_describe(description)}")
            lines += settings_lines(nested, f"{key}.", None if default in (None, REQUIRED) else default)
            continue
        shown = "required" if default is REQUIRED else f"default {_yaml(default)}"
        lines.append(f"--{key} {type_name(annotation)} ({shown}){_describe(description)}")
    return lines


REQUIRED = object()


def _fields(cls: type):
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        overrides = getattr(cls, "stage_defaults", {})
        for name, field in cls.model_fields.items():
            if name in overrides:
                default = overrides[name]
            elif field.is_required():
                default = REQUIRED
            elif field.default_factory is not None:
                default = field.default_factory()
            else:
                default = field.default
            yield name, field.annotation, default, field.description
    else:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = REQUIRED
            yield field.name, hints[field.name], default, field.metadata.get("description")


def _settings_class(annotation: Any) -> type | None:
    """The settings block an annotation holds (also as `Block | None`), or None for a plain value."""
    options = [a for a in _union_args(annotation) if a is not type(None)]
    if len(options) != 1 or not isinstance(options[0], type):
        return None
    cls = options[0]
    return cls if issubclass(cls, BaseModel) or dataclasses.is_dataclass(cls) else None


def _union_args(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        optional = type(None) in typing.get_args(annotation)
        return "|".join(dict.fromkeys(names)) + ("|null" if optional else "")
    if origin is Literal:
        return "{" + "|".join(str(_yaml(a)) for a in typing.get_args(annotation)) + "}"
    if origin in (list, tuple, set) or annotation in (list, tuple, set):
        return "LIST"
    if origin is dict or annotation is dict:
        return "MAPPING"
    if isinstance(annotation, type) and (issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)):
        return "MAPPING"
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    return SCALARS.get(annotation, "VALUE")


def _yaml(value: Any) -> str:
    """A default as the user would write it in YAML or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, BaseModel) or dataclasses.is_dataclass(value):
        return "{...}"
    return str(value)


def _describe(description: str | None) -> str:
    return f": {description}" if description else ""
