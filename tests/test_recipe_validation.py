"""Recipe validation: every mistake is a RecipeError naming the file and the line it is on.

Each test writes a small recipe whose faulty line is marked with `# <-` and checks that the error
names the recipe file and exactly that line, so a user can jump to it. Nothing is run.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from alignlab.pipeline.recipe import RecipeError, load_recipe

GOOD = """\
name: check
stages:
  task:
    type: task_data
    task: sentiment
  sft:
    model: "@task/model"
    data: "@task/data/sft.jsonl"
    train:
      lr: 1.0e-4
      batch_size: 8
  dpo:
    model: "@sft/model"
    data: "@task/data/pairs.jsonl"
    beta: 0.1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def marked_line(path: Path) -> int:
    """1-based number of the line carrying the `# <-` marker."""
    lines = path.read_text().splitlines()
    (number,) = [i + 1 for i, line in enumerate(lines) if "# <-" in line]
    return number


def error_of(path: Path) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, run_dir=path.parent / "runs")
    return str(info.value)


def assert_names_file_and_line(message: str, path: Path, line: int) -> None:
    assert str(path) in message, message
    assert f"line {line}:" in message or f"line {line}," in message, message
    # and no other line is blamed
    others = [f"line {n}:" for n in range(1, 40) if n != line]
    assert not any(o in message for o in others), message


def test_the_good_recipe_loads(tmp_path):
    name, run_dir, stages = load_recipe(write(tmp_path, GOOD), run_dir=tmp_path / "runs")
    assert name == "check"
    assert [s.name for s in stages] == ["task", "sft", "dpo"]


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, GOOD.replace("stages:", "stagez: {}  # <-\nstages:", 1))
    message = error_of(path)
    assert "unknown key 'stagez'" in message
    assert_names_file_and_line(message, path, marked_line(path))


def test_unknown_stage_key(tmp_path):
    path = write(tmp_path, GOOD.replace("    beta: 0.1", "    beta: 0.1\n    betaa: 1  # <-"))
    message = error_of(path)
    assert "unknown key 'betaa'" in message and "'dpo'" in message
    assert_names_file_and_line(message, path, marked_line(path))


def test_unknown_nested_key_points_at_its_own_line(tmp_path):
    path = write(tmp_path, GOOD.replace("      batch_size: 8", "      batch_size: 8\n      lrr: 3  # <-"))
    message = error_of(path)
    assert "unknown key 'train.lrr'" in message and "'sft'" in message
    assert_names_file_and_line(message, path, marked_line(path))


def test_wrong_type(tmp_path):
    path = write(tmp_path, GOOD.replace("    beta: 0.1", "    beta: lots  # <-"))
    message = error_of(path)
    assert "beta" in message and "number" in message
    assert_names_file_and_line(message, path, marked_line(path))


def test_wrong_nested_type(tmp_path):
    path = write(tmp_path, GOOD.replace("      batch_size: 8", "      batch_size: eight  # <-"))
    message = error_of(path)
    assert "train.batch_size" in message
    assert_names_file_and_line(message, path, marked_line(path))


def test_unknown_stage_type(tmp_path):
    path = write(tmp_path, GOOD.replace("  dpo:\n", "  dpo:  # <-\n    type: dpoo\n"))
    message = error_of(path)
    assert "unknown stage type 'dpoo'" in message and "dpo" in message.split("known:")[1]
    assert_names_file_and_line(message, path, marked_line(path))


def test_stage_name_that_is_no_type_needs_a_type(tmp_path):
    path = write(tmp_path, GOOD.replace("  dpo:\n", "  align:  # <-\n"))
    message = error_of(path)
    assert "unknown stage type 'align'" in message
    assert_names_file_and_line(message, path, marked_line(path))


def test_reference_to_a_later_stage(tmp_path):
    path = write(tmp_path, GOOD.replace('    data: "@task/data/sft.jsonl"', '    data: "@dpo/data/sft.jsonl"  # <-'))
    message = error_of(path)
    assert "'dpo'" in message and "earlier" in message and "'sft'" in message
    assert_names_file_and_line(message, path, marked_line(path))


def test_reference_to_a_missing_stage(tmp_path):
    path = write(tmp_path, GOOD.replace('    model: "@sft/model"', '    model: "@sftt/model"  # <-'))
    message = error_of(path)
    assert "'sftt'" in message and "earlier" in message
    assert_names_file_and_line(message, path, marked_line(path))


def test_a_stage_cannot_refer_to_itself(tmp_path):
    path = write(tmp_path, GOOD.replace('    model: "@sft/model"', '    model: "@dpo/model"  # <-'))
    message = error_of(path)
    assert "'dpo'" in message and "earlier" in message
    assert_names_file_and_line(message, path, marked_line(path))


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, GOOD.replace("    beta: 0.1", "    beta: 0.1: 2  # <-"))
    message = error_of(path)
    assert "invalid YAML" in message
    assert str(path) in message and f"line {marked_line(path)}," in message


def test_a_recipe_without_stages(tmp_path):
    message = error_of(write(tmp_path, "name: empty\nstages: {}\n"))
    assert "stages" in message and "recipe.yaml" in message


def test_type_defaults_to_the_stage_name(tmp_path):
    _, _, stages = load_recipe(write(tmp_path, GOOD), run_dir=tmp_path / "runs")
    kinds = {s.name: s.type for s in stages}
    assert kinds == {"task": "task_data", "sft": "sft", "dpo": "dpo"}
    assert type(stages[1].config).__name__ == "SFTConfig"
    assert type(stages[2].config).__name__ == "DPOConfig"


def test_references_resolve_under_the_run_directory(tmp_path):
    run_dir = tmp_path / "elsewhere" / "run-7"
    _, got_dir, stages = load_recipe(write(tmp_path, GOOD), run_dir=run_dir)
    assert got_dir == run_dir
    sft, dpo = stages[1], stages[2]
    assert sft.config.model == str(run_dir / "task" / "model")
    assert sft.config.data == str(run_dir / "task" / "data" / "sft.jsonl")
    assert dpo.config.model == str(run_dir / "sft" / "model")
    assert set(sft.depends_on) == {"task"}
    assert set(dpo.depends_on) == {"sft", "task"}
    # settings that are not references pass through untouched
    assert sft.config.train.lr == 1.0e-4 and dpo.config.beta == 0.1


def test_default_run_directory_is_runs_slash_name(tmp_path):
    _, run_dir, stages = load_recipe(write(tmp_path, GOOD))
    assert run_dir == Path("runs") / "check"
    assert stages[2].config.model == str(Path("runs") / "check" / "sft" / "model")


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe, tmp_path):
    # every stage's settings parse and every "@stage/..." reference names an earlier stage
    _, _, stages = load_recipe(recipe, run_dir=tmp_path)
    assert stages
