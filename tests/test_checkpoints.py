"""What a stage leaves on disk and how a rerun uses it: small LoRA checkpoints (whole ones for anything else),
no checkpoints once the model is written, one TensorBoard point per step after a resume, strict JSON
metrics read back as NaN, nothing after an early failure."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
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


def _kill_at_step(monkeypatch, n):
    """AdamW's n-th step raises KeyboardInterrupt (a kill); returns a function that undoes it."""
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return lambda: monkeypatch.setattr(torch.optim.AdamW, "step", real_step)


def test_lora_checkpoints_hold_the_adapter_and_resume_exactly(tiny_model_dir, tmp_path, monkeypatch):
    data = _sft_data(tmp_path / "sft.jsonl")
    lora = ["--lora.r", "4", "--lora.alpha", "8", "--train.keep_checkpoints", "true"]
    whole = _sft(tiny_model_dir, data, tmp_path / "whole", *lora)
    assert whole.exit_code == 0, whole.output
    ckpt = tmp_path / "whole" / "checkpoints" / "step-000006" / "model.safetensors"
    full = (tiny_model_dir / "model.safetensors").stat().st_size
    assert ckpt.stat().st_size < full / 5  # the adapter only (its weights are ~1/10 of this tiny model's)
    assert all("lora_" in name for name in load_file(str(ckpt)))

    undo = _kill_at_step(monkeypatch, 5)  # after the checkpoint of step 4
    killed = _sft(tiny_model_dir, data, tmp_path / "killed", *lora)
    assert killed.exit_code == 130 and not (tmp_path / "killed" / "done.json").exists()  # typer: 130 on Ctrl-C
    undo()
    resumed = _sft(tiny_model_dir, data, tmp_path / "killed", *lora)
    assert resumed.exit_code == 0, resumed.output
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
    undo = _kill_at_step(monkeypatch, 6)  # step 5 was logged, its checkpoint (every 2) was not written
    _sft(tiny_model_dir, data, tmp_path / "run")
    undo()
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
        write_json(path, {"a": math.nan, "b": [math.inf, 1.0], "c": {"d": -math.inf}, "e": torch.tensor(math.nan),
                          "f": np.float32("nan"), "g": np.array([1.0, np.inf])})  # numpy's float32 is no float
        assert json.loads(path.read_text(), parse_constant=refuse) == {"a": None, "b": [None, 1.0], "c": {"d": None},
                                                                       "e": None, "f": None, "g": [1.0, None]}


def test_a_stage_that_fails_before_its_first_step_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    import alignlab.stages.offline.sft as sft

    def fails(*args, **kwargs):
        raise ValueError("the first batch could not be built")

    data = _sft_data(tmp_path / "sft.jsonl")
    monkeypatch.setattr(sft, "pad_rows", fails)
    result = _sft(tiny_model_dir, data, tmp_path / "out")
    assert result.exit_code == 1 and "could not be built" in result.stderr
    assert not (tmp_path / "out").exists()  # no log.jsonl, no tensorboard/, no empty directory


def test_modules_other_than_lora_models_are_saved_whole(tmp_path):
    from alignlab.train.checkpoint import load_weights, save_weights

    def toy():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))

    def state(m):
        return [t.clone() for t in m.state_dict().values()]

    partly = toy()
    partly[0].requires_grad_(False)
    frozen = toy().requires_grad_(False)  # TR-DPO's reference: frozen, yet changed by every sync
    for module, name in ((partly, "partly"), (frozen, "frozen")):
        with torch.no_grad():
            module[0].weight.add_(1.0)
        save_weights(module, tmp_path / f"{name}.safetensors")
        fresh = toy().requires_grad_(module[1].weight.requires_grad)
        load_weights(fresh, tmp_path / f"{name}.safetensors")
        assert all(torch.equal(a, b) for a, b in zip(state(module), state(fresh))), name


def _pairs(path, n=16):
    path.write_text("".join(json.dumps({"prompt": f"the film {i % 4}", "chosen": f" was good {i}",
                                        "rejected": f" was bad and dull {i % 3}"}) + "\n" for i in range(n)))
    return str(path)


def test_tr_dpo_resumes_with_its_synced_reference(tiny_model_dir, tmp_path, monkeypatch):
    from test_stages import run_stage

    settings = dict(model=str(tiny_model_dir), data=_pairs(tmp_path / "pairs.jsonl"), eval_fraction=0.0,
                    max_length=48, max_prompt_length=16, ref_mode="live", ref_sync={"every": 3, "alpha": 0.5},
                    train={"batch_size": 4, "max_steps": 6, "save_every": 2, "lr": 1e-2, "device": "cpu"})
    run_stage("dpo", tmp_path / "whole", **settings)
    undo = _kill_at_step(monkeypatch, 5)  # after the checkpoint of step 4; the reference was synced at 3
    with pytest.raises(KeyboardInterrupt):
        run_stage("dpo", tmp_path / "killed", **settings)
    undo()
    run_stage("dpo", tmp_path / "killed", **settings)
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_adapter_is_not_resumed_onto_other_base_weights(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    data = _sft_data(tmp_path / "sft.jsonl")
    undo = _kill_at_step(monkeypatch, 3)  # after the checkpoint of step 2
    assert _sft(base, data, tmp_path / "out", "--lora.r", "4").exit_code == 130
    undo()
    weights = load_file(str(base / "model.safetensors"))
    name = next(k for k in weights if k.endswith("wte.weight"))
    weights[name] = weights[name] + 0.01  # the base model was changed (retrained, say) since
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    again = _sft(base, data, tmp_path / "out", "--lora.r", "4")
    assert again.exit_code == 1 and "other base weights" in again.stderr, again.output


def _one_stage_recipe(tmp_path, model, data):
    recipe = tmp_path / "one.yaml"
    recipe.write_text(yaml.safe_dump({"name": "one", "stages": {"sft": {
        "model": str(model), "data": data, "eval_data": data, "max_length": 48, "max_prompt_length": 16,
        "train": {"batch_size": 4, "max_steps": 4, "save_every": 2, "lr": 1e-2, "device": "cpu"}}}}))
    return recipe


def test_a_kill_before_done_json_resumes_without_training_or_logging_again(tiny_model_dir, tmp_path, monkeypatch,
                                                                          capsys):
    import alignlab.stages.common as common
    from alignlab.pipeline.runner import run_recipe

    recipe = _one_stage_recipe(tmp_path, tiny_model_dir, _sft_data(tmp_path / "sft.jsonl"))
    stage = tmp_path / "run" / "sft"
    real_write_json = common.write_json

    def killed_at_done(path, obj):
        if path.name == "done.json":
            raise KeyboardInterrupt
        real_write_json(path, obj)

    # killed after the model and metrics.json, before done.json
    monkeypatch.setattr(common, "write_json", killed_at_done)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "run")
    monkeypatch.setattr(common, "write_json", real_write_json)
    model = load_file(str(stage / "model" / "model.safetensors"))
    metrics = json.loads((stage / "metrics.json").read_text())
    undo = _kill_at_step(monkeypatch, 1)  # any training step now would be a retraining
    run_recipe(recipe, tmp_path / "run")  # resumes at the final checkpoint: writes the model again
    undo()
    assert "resuming" in capsys.readouterr().err
    again = load_file(str(stage / "model" / "model.safetensors"))
    assert all(torch.equal(model[k], again[k]) for k in model)
    assert json.loads((stage / "metrics.json").read_text()) == metrics
    assert (stage / "done.json").exists() and not (stage / "checkpoints").exists()
    lines = [json.loads(x) for x in (stage / "log.jsonl").read_text().splitlines()]
    assert [(x["step"], "loss" in x) for x in lines] == [(1, True), (2, True), (3, True), (4, True), (4, False)]

def test_a_stage_killed_before_dropping_its_checkpoints_is_skipped_and_drops_them(tiny_model_dir, tmp_path,
                                                                                   monkeypatch, capsys):
    import alignlab.stages.common as common
    from alignlab.pipeline.runner import run_recipe

    recipe = _one_stage_recipe(tmp_path, tiny_model_dir, _sft_data(tmp_path / "sft.jsonl"))
    stage = tmp_path / "run" / "sft"
    real_drop = common.drop_checkpoints

    def killed(out, config):
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "drop_checkpoints", killed)  # finish() is killed right after done.json
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "run")
    monkeypatch.setattr(common, "drop_checkpoints", real_drop)
    assert (stage / "done.json").exists() and (stage / "checkpoints").exists()
    run_recipe(recipe, tmp_path / "run")
    assert "finished earlier, skipped" in capsys.readouterr().err
    assert not (stage / "checkpoints").exists()


def test_a_recipe_stage_that_fails_before_its_first_step_leaves_no_directory(tiny_model_dir, tmp_path, monkeypatch):
    import alignlab.stages.offline.sft as sft
    from alignlab.pipeline.runner import run_recipe

    def fails(*args, **kwargs):
        raise ValueError("the first batch could not be built")

    monkeypatch.setattr(sft, "pad_rows", fails)
    recipe = _one_stage_recipe(tmp_path, tiny_model_dir, _sft_data(tmp_path / "sft.jsonl"))
    with pytest.raises(ValueError, match="could not be built"):
        run_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run" / "sft").exists()  # the next run says "running", not "resuming"


def test_a_report_reads_null_figures_back_as_nan(tmp_path):
    from alignlab.stages.common import stage_metrics, write_json
    from test_stages import run_stage

    # one prompt: the standard errors are NaN; a model without gold scores has a NaN mean
    models = {"sft": {"gold_mean": 0.5, "gold_se": math.nan, "kl_mean": 0.0},
              "dpo": {"gold_mean": math.nan, "gold_se": math.nan, "kl_mean": 1.5}}
    write_json(tmp_path / "evaluate" / "metrics.json", {"models": models})
    assert math.isnan(stage_metrics(tmp_path / "evaluate")["models"]["dpo"]["gold_mean"])
    summary = run_stage("report", tmp_path / "report", evaluate=str(tmp_path / "evaluate"), baseline="sft")
    assert (tmp_path / "report" / "report.md").exists() and math.isnan(summary["gold_gain_over_baseline"]["dpo"])


@pytest.mark.parametrize("ref_mode", ["precompute", "live"])
def test_a_dpo_run_that_fails_at_its_first_batch_leaves_nothing(ref_mode, tiny_model_dir, tmp_path, monkeypatch):
    import alignlab.stages.offline.dpo as dpo

    def fails(*args, **kwargs):
        raise ValueError("the first batch could not be built")

    # precompute: the reference pass fails before cache/ is written; live: the first training step does
    monkeypatch.setattr(dpo, "pair_batch", fails)
    args = ["dpo", "--model", str(tiny_model_dir), "--data", _pairs(tmp_path / "pairs.jsonl"), "--out",
            str(tmp_path / "out"), "--ref_mode", ref_mode, "--max_length", "48", "--max_prompt_length", "16",
            "--train.device", "cpu"]
    result = CliRunner().invoke(app, args, env={"CI": "true"})
    assert result.exit_code == 1 and "could not be built" in result.stderr
    assert not (tmp_path / "out").exists()  # no cache/, log.jsonl, tensorboard/ nor an empty directory
