"""Write a user's Python module (e.g. reward functions named as `module:function`) and make it
importable for the duration of a `with` block."""

from __future__ import annotations

import contextlib
import sys
import textwrap
from pathlib import Path


@contextlib.contextmanager
def importable_module(folder: Path, name: str, code: str):
    (folder / f"{name}.py").write_text(textwrap.dedent(code))
    sys.path.insert(0, str(folder))
    try:
        yield name
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)
