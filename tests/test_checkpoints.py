"""What a stage leaves on disk: small LoRA checkpoints, no checkpoints once the model is written,
one TensorBoard point per step after a resume, strict JSON metrics, nothing after an early failure."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from typer.testing import CliRunner

from alignlab.cli import app


def _sft_data(path, n=24):
    path.write_text("".join(json.dumps({"prompt": f"the film {i % 5}", "completion": f" was good and fine {i}"}) + "\n"
                            for i in range(n)))
    return str(path)


def _sft(model, data, out, *extra):
    args = ["sft", "--model", str(model), "--data", data, "--out", str(out), "--max_length", "48",
            "--max_prompt_length", "16", "--train.batch_size", "4", "--train.max_steps", "6", "--train.save_every", "2",
            "--train.lr", "1e-2", "--train.device", "cpu", *extra]
    return CliRunner().invoke(app, args, env={"CI": "true"})


def test_lora_checkpoints_hold_the_adapter_and_resume_exactly(tiny_model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import alignlab.train.loop as loop

    data = _sft_data(tmp_path / "sft.jsonl")
    lora = ["--lora.r", "4", "--lora.alpha", "8", "--train.keep_checkpoints", "true"]
    whole = _sft(tiny_model_dir, data, tmp_path / "whole", *lora)
    assert whole.exit_code == 0, whole.output
    ckpt = tmp_path / "whole" / "checkpoints" / "step-000006" / "model.safetensors"
    full = (tiny_model_dir / "model.safetensors").stat().st_size
    assert ckpt.stat().st_size < full / 5  # the adapter only (its weights are ~1/10 of this tiny model's)
    assert all("lora_" in name for name in load_file(str(ckpt)))

    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def dies_at_step_five(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # after the checkpoint of step 4
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dies_at_step_five)
    killed = _sft(tiny_model_dir, data, tmp_path / "killed", *lora)
    assert killed.exit_code == 130 and not (tmp_path / "killed" / "done.json").exists()  # typer: 130 on Ctrl-C
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    resumed = _sft(tiny_model_dir, data, tmp_path / "killed", *lora)
    assert resumed.exit_code == 0, resumed.output
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loop  # the loop module is what resumed


def test_a_finished_stage_drops_its_checkpoints_unless_asked(tiny_model_dir, tmp_path):
    data = _sft_data(tmp_path / "sft.jsonl")
    assert _sft(tiny_model_dir, data, tmp_path / "dropped").exit_code == 0
    assert (tmp_path / "dropped" / "model").is_dir() and not (tmp_path / "dropped" / "checkpoints").exists()
    assert _sft(tiny_model_dir, data, tmp_path / "kept", "--train.keep_checkpoints", "true").exit_code == 0
    assert (tmp_path / "kept" / "checkpoints" / "latest").exists()
    # run again on the finished directory: skipped (it would otherwise start over), not retrained
    before = (tmp_path / "dropped" / "model" / "model.safetensors").stat().st_mtime_ns
    again = _sft(tiny_model_dir, data, tmp_path / "dropped")
    assert again.exit_code == 0 and "finished earlier" in again.stderr
    assert (tmp_path / "dropped" / "model" / "model.safetensors").stat().st_mtime_ns == before
    other = _sft(tiny_model_dir, data, tmp_path / "dropped", "--train.lr", "5e-3")
    assert other.exit_code == 1 and "finished with other settings" in other.stderr


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _sft_data(tmp_path / "sft.jsonl")
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def dies_at_step_six(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # steps 5 was logged, its checkpoint (every 2) was not written
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dies_at_step_six)
    _sft(tiny_model_dir, data, tmp_path / "run")
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    # TensorBoard reads event files in name order, which starts with the second they were opened: a
    # resume is a later process; in one test process, wait so the resumed file sorts after the first
    time.sleep(1.1)
    assert _sft(tiny_model_dir, data, tmp_path / "run").exit_code == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss")]
    assert steps == [1, 2, 3, 4, 5, 6], steps


def test_metrics_json_is_strict_json():
    from alignlab.stages.common import write_json

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "metrics.json"
        write_json(path, {"a": math.nan, "b": [math.inf, 1.0], "c": {"d": -math.inf}, "e": torch.tensor(math.nan)})
        assert json.loads(path.read_text(), parse_constant=refuse) == {"a": None, "b": [None, 1.0], "c": {"d": None},
                                                                       "e": None}


def test_a_stage_that_fails_before_its_first_step_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    import alignlab.stages.sft as sft

    def fails(*args, **kwargs):
        raise ValueError("the first batch could not be built")

    data = _sft_data(tmp_path / "sft.jsonl")
    monkeypatch.setattr(sft, "pad_rows", fails)
    result = _sft(tiny_model_dir, data, tmp_path / "out")
    assert result.exit_code == 1 and "could not be built" in result.stderr
    assert not (tmp_path / "out").exists()  # no log.jsonl, no tensorboard/, no empty directory
