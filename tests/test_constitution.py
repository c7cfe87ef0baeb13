"""Constitution files: the built-in one loads, and mistakes are reported with file, line and field."""

from __future__ import annotations

import random

import pytest

from alignlab.data.errors import DataError
from alignlab.feedback.ai.constitution import load_constitution

GOOD = """name: tiny
principles:
  - name: honesty
    critique_request: Point out anything false in the response.
    revision_request: Rewrite the response so that it is accurate.
    comparison: Which response is more honest?
  - name: helpfulness
    critique_request: Where does the response not answer the question?
    revision_request: Rewrite the response to answer the question fully.
    comparison: Which response is more helpful?
"""


def test_the_default_constitution_covers_its_topics():
    c = load_constitution("default")
    topics = {p.topic for p in c.principles}
    assert {"harm", "dangerous capabilities", "honesty", "respect and bias", "privacy", "autonomy",
            "helpfulness"} <= topics
    assert len(c.principles) >= 12 and all(p.comparison.endswith("?") for p in c.principles)
    assert "needless_refusal" in {p.name for p in c.principles}  # helpfulness is a principle too


def test_draw_is_seeded_and_covers_the_principles(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    c = load_constitution(path)
    draws = [c.draw(random.Random(s)).name for s in range(40)]
    assert set(draws) == {"honesty", "helpfulness"}
    assert draws == [c.draw(random.Random(s)).name for s in range(40)]


@pytest.mark.parametrize("broken, line, field, message", [
    (GOOD.replace("    comparison: Which response is more helpful?", "    comparison: Pick the more helpful one."),
     10, "principles.1.comparison", "must be a question"),
    (GOOD.replace("    revision_request: Rewrite the response so that it is accurate.\n", ""),
     3, "principles.0.revision_request", "Field required"),
    (GOOD.replace("  - name: helpfulness", "  - name: helpfulness\n    colour: blue"), 8, "principles.1.colour", "unknown key"),
    (GOOD.replace("name: helpfulness", "name: honesty"), None, None, "unique"),
    ("name: x\nprinciples: []\n", 2, "principles", "at least 1"),
])
def test_mistakes_name_file_line_and_field(tmp_path, broken, line, field, message):
    path = tmp_path / "c.yaml"
    path.write_text(broken)
    with pytest.raises(DataError, match=message) as err:
        load_constitution(path)
    assert str(path) in str(err.value)
    if line is not None:
        assert err.value.source.line == line and err.value.field == field


def test_an_example_must_use_a_known_principle(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD + """examples:
  - prompt: hi
    response: hello
    principle: kindness
    critique: fine
    revision: hello there
""")
    with pytest.raises(DataError, match="kindness") as err:
        load_constitution(path)
    assert err.value.field == "examples.0.principle" and err.value.source.line == 14


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_constitution(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprinciples: [\n")
    with pytest.raises(DataError, match="not valid YAML"):
        load_constitution(bad)


def test_a_repeated_name_is_no_field_of_its_own(tmp_path):
    # the whole-constitution check's sentence ("...; repeated: x") is a message, not a field path
    path = tmp_path / "c.yaml"
    path.write_text(GOOD.replace("name: helpfulness", "name: honesty"))
    with pytest.raises(DataError, match="unique; repeated: honesty") as err:
        load_constitution(path)
    assert err.value.field is None
