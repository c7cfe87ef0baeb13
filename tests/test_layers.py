"""The map in DESIGN.md holds: a lower layer never imports a higher one (lazy imports included), and
feedback's wings keep their direction (`ai` may use `rewards`; `human` uses neither)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "alignlab"

# lowest first; a package may import only packages before it
LAYERS = ["files", "data", "ops", "tasks", "losses", "models", "rollout", "feedback", "search", "train", "eval",
          "guard", "oversight", "stages", "pipeline", "cli"]
# feedback's wings: a wing may import only the wings listed for it
WINGS = {"judgement": set(), "rewards": set(), "ai": {"rewards", "judgement"}, "human": {"judgement"}}


def imports() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(importing module's path parts, imported module's name parts) for every alignlab import."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [(parts, tuple(n.split(".")[1:])) for n in names if n.startswith("alignlab.")]
    return found


def test_no_layer_imports_a_higher_one():
    upward = sorted({f"{'/'.join(src)} imports alignlab.{'.'.join(dst)}" for src, dst in imports()
                     if LAYERS.index(dst[0]) > LAYERS.index(src[0])})
    assert not upward, "\n".join(upward)


def test_every_package_has_a_layer():
    packages = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.name != "__init__.py" and p.name != "__pycache__"}
    assert packages == set(LAYERS)


def test_feedback_wings_keep_their_direction():
    crossing = sorted({f"feedback/{'/'.join(src[1:])} imports alignlab.{'.'.join(dst)}" for src, dst in imports()
                       if src[0] == dst[0] == "feedback" and len(src) > 1 and len(dst) > 1 and src[1] != dst[1]
                       and dst[1] not in WINGS[src[1]]})
    assert not crossing, "\n".join(crossing)
