"""`alignlab STAGE --help` lists every setting as `--key TYPE (default value)`, nested keys included."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from alignlab.cli import app
from alignlab.pipeline.settings_help import settings_lines
from alignlab.stages import STAGES


def test_ppo_help_lists_nested_settings_with_types_and_defaults():
    result = CliRunner().invoke(app, ["ppo", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for line in ("--train.lr FLOAT (default 1e-05)", "--lora.r INT (default 16)", "--lora.alpha INT (default 32)",
                 "--lora.target_modules LIST|TEXT (default all-linear)", "--sampling.max_new_tokens INT (default 48)",
                 "--kl.estimator {k1|k3} (default k1)", "--model TEXT (required)",
                 "--train.micro_batch_size INT|null (default null)"):
        assert line in result.stdout, line
    assert "Settings(" not in result.stdout  # no Python repr of a nested settings object


def test_a_stage_default_that_differs_from_the_blocks_is_shown():
    # sl_cai declares its own sampling block with max_new_tokens 128 (the class default is 48)
    config_cls, _ = STAGES["sl_cai"].load()
    assert "--sampling.max_new_tokens INT (default 128)" in settings_lines(config_cls)


@pytest.mark.parametrize("kind", sorted(STAGES))
def test_every_stage_lists_leaf_settings_only(kind):
    config_cls, _ = STAGES[kind].load()
    lines = settings_lines(config_cls)
    keys = [line.split(" ", 1)[0] for line in lines]
    assert len(keys) == len(set(keys)), kind
    for line in lines:
        assert line.startswith("--") and ("(required)" in line or "(default " in line or "(off unless" in line), line
        assert "Settings(" not in line and "object at 0x" not in line, line


def test_the_command_list_starts_without_torch_or_any_stage():
    # `alignlab --help` took 6 s when every stage (and torch) was imported to build it; now only a
    # stage's own --help or run imports it. A fresh interpreter, as a user's shell starts one.
    code = "import sys, alignlab.cli; heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
