"""What a user's mistake prints: one `error:` line and nothing left behind; a bug keeps its traceback.

Each case goes through the CLI app in this process (the console script's subprocess cases live in
test_faults.py): a truncated safetensors file, an `--out` under a file or an unwritable directory,
a `.gguf` file as `--model`, and for contrast a torch error from inside a stage, which is a bug.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from alignlab.cli import app


def _sft_args(model, data, out) -> list[str]:
    return ["sft", "--model", str(model), "--data", str(data), "--out", str(out), "--max_length", "64",
            "--max_prompt_length", "16", "--train.max_steps", "1", "--train.device", "cpu"]


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": "the film", "completion": f" was good {i}"}) + "\n"
                            for i in range(8)))
    return path


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_truncated_safetensors_file_is_one_line(tiny_model_dir, data, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = CliRunner().invoke(app, _sft_args(model, data, tmp_path / "out"), env={"CI": "true"})
    assert "safetensors" in _one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_an_out_under_a_file_is_one_line(tiny_model_dir, data, tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = CliRunner().invoke(app, _sft_args(tiny_model_dir, data, tmp_path / "a-file" / "out"), env={"CI": "true"})
    message = _one_error_line(result)
    assert "a-file" in message and "is a file, not a directory" in message


def test_an_unwritable_out_is_one_line(tiny_model_dir, data, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere: answer the permission check as for anyone else
        import alignlab.cli as cli

        real_access = os.access
        monkeypatch.setattr(cli.os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    result = CliRunner().invoke(app, _sft_args(tiny_model_dir, data, locked / "out"), env={"CI": "true"})
    assert "no permission" in _one_error_line(result)


def test_a_gguf_file_as_model_is_one_line(data, tmp_path):
    gguf = tmp_path / "SmolLM2.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    result = CliRunner().invoke(app, _sft_args(gguf, data, tmp_path / "out"), env={"CI": "true"})
    assert "SmolLM2.Q4_1.gguf" in _one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_a_bug_inside_torch_keeps_its_traceback(tiny_model_dir, data, tmp_path, monkeypatch):
    # a RuntimeError raised by torch's insides is not the user's doing: it must not be hidden
    import torch

    import alignlab.stages.offline.sft as sft

    def broken(*args, **kwargs):
        return torch.zeros(2, 3) @ torch.zeros(2, 3)  # a shape mismatch, raised inside torch

    monkeypatch.setattr(sft, "tokenize_sft", broken)
    result = CliRunner().invoke(app, _sft_args(tiny_model_dir, data, tmp_path / "out"), env={"CI": "true"})
    assert isinstance(result.exception, RuntimeError) and "shapes cannot be multiplied" in str(result.exception)
