"""Small files that each do one thing: no module over 400 lines, no function over 60 (docstring aside).

A reader should be able to hold a file and a function in their head. An exception needs a reason
here, next to its name, and the test fails when the exception is no longer needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "alignlab"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60

# "path:function" -> why it stays long
FUNCTION_EXCEPTIONS: dict[str, str] = {}
FILE_EXCEPTIONS: dict[str, str] = {}


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the def to the end, less the docstring's."""
    total = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        total -= first.end_lineno - first.lineno + 1
    return total


def long_functions() -> dict[str, int]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _body_lines(node)
                if n > MAX_FUNCTION_LINES:
                    found[f"{path.relative_to(SRC)}:{node.name}"] = n
    return found


def long_files() -> dict[str, int]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > MAX_FILE_LINES:
            found[str(path.relative_to(SRC))] = n
    return found


def test_no_function_over_the_limit():
    over = {k: n for k, n in long_functions().items() if k not in FUNCTION_EXCEPTIONS}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (split them, or give a reason): {over}"


def test_no_file_over_the_limit():
    over = {k: n for k, n in long_files().items() if k not in FILE_EXCEPTIONS}
    assert not over, f"files over {MAX_FILE_LINES} lines (split them, or give a reason): {over}"


def test_every_exception_is_still_needed():
    stale = set(FUNCTION_EXCEPTIONS) - set(long_functions()) | set(FILE_EXCEPTIONS) - set(long_files())
    assert not stale, f"no longer over the limit; remove from the exception lists: {sorted(stale)}"


def test_the_counter_counts():
    # the measure itself, on a hand-made function: def line + 2 body lines, docstring not counted
    tree = ast.parse('def f():\n    """doc\n    more"""\n    x = 1\n    return x\n')
    assert _body_lines(tree.body[0]) == 3
