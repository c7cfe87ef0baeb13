"""Data parallel on CPU: two processes under torchrun (gloo) give the update that one process gives.

`batch_size` is the global batch (examples per optimizer step over all processes) and
`micro_batch_size` only a memory knob, so 2 processes x 2 micro-batches of 2 must reach the same
weights as 1 process taking the 8 examples at once. 25 examples make the epoch's last batch a
single example, which leaves one process with nothing of its own for that step.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from alignlab.cli import app

TORCH_INFO_LINE = re.compile(r"^(\[rank\d+\]:)?\[I\d{4} ")
WORDS = "the film was a delight dull tedious plot acting superb pacing soundtrack stunning world".split()


def _write_sft_data(path: Path, n: int) -> Path:
    """Deterministic prompt/completion rows of varied lengths (so padding differs between layouts)."""
    rows = []
    for i in range(n):
        prompt = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(2 + i % 3))
        completion = " ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(3 + i % 5))
        rows.append(json.dumps({"prompt": prompt, "completion": completion}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _without_torch_info(stderr: str) -> str:
    """The launcher's stderr minus torch's C++ INFO lines (asked for above), for failure messages."""
    return "\n".join(line for line in stderr.splitlines() if not TORCH_INFO_LINE.match(line))[-4000:]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _ddp_and_single(stage: str, settings: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """Run `stage` with two processes under torchrun (micro-batches of 2) and with one process
    taking each batch at once; return the two stage directories."""
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TORCH_DISTRIBUTED_DEBUG": "INFO", "TORCH_CPP_LOG_LEVEL": "INFO"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ALIGNLAB_DEBUG"):
        env.pop(name, None)
    ddp_out = tmp_path / f"{stage}-ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "alignlab.cli", stage, "--out", str(ddp_out), *settings, "--train.micro_batch_size", "2"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, _without_torch_info(proc.stderr)
    # two ranks trained: each took half of every batch, so the logged loss (a sum over the ranks'
    # shares) equals one process's only if the normaliser and the figures were reduced across them
    assert json.loads((ddp_out / "metrics.json").read_text())["processes"] == 2

    # one process taking all 8 at once (in this process: same code path minus torch.distributed),
    # on one thread like each DDP worker: tiny ops gain nothing from more
    single_out = tmp_path / f"{stage}-single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, [stage, "--out", str(single_out), *settings], env={"CI": "true"})
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, (result.output, result.exception)
    return ddp_out, single_out


def test_two_process_ddp_gives_the_same_weights_as_one_process(tiny_model_dir, tmp_path):
    data = _write_sft_data(tmp_path / "sft.jsonl", n=25)  # batches of 8, 8, 8 and 1
    settings = [
        "--model", str(tiny_model_dir), "--data", str(data), "--max_length", "96", "--max_prompt_length", "64",
        "--train.lr", "3e-3", "--train.batch_size", "8", "--train.max_steps", "4", "--train.schedule", "constant",
        "--train.device", "cpu", "--train.save_every", "100",
    ]
    ddp_out, single_out = _ddp_and_single("sft", settings, tmp_path)

    start, ddp, single = _weights(tiny_model_dir), _weights(ddp_out / "model"), _weights(single_out / "model")
    assert _max_abs_diff(ddp, single) <= 1e-5
    assert _max_abs_diff(ddp, start) > 1e-3, "training did not move the weights"
    assert _max_abs_diff(single, start) > 1e-3
    # the same optimizer steps with the same loss and gradient at each
    ddp_log = [json.loads(x) for x in (ddp_out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in ddp_log if "loss" in x] == [1, 2, 3, 4]
    single_log = [json.loads(x) for x in (single_out / "log.jsonl").read_text().splitlines()]
    # Adam barely sees a uniformly mis-scaled gradient in the weights; the logged gradient norm does
    for key in ("loss", "grad_norm"):
        ddp_values = [x[key] for x in ddp_log if "loss" in x]
        assert ddp_values == pytest.approx([x[key] for x in single_log if "loss" in x], rel=1e-5), key


def test_kto_reference_point_spans_both_processes(tiny_model_dir, tmp_path):
    # KTO's z₀ comes from the whole global batch: two processes must train exactly as one does
    rows = []
    for i, line in enumerate(_write_sft_data(tmp_path / "sft.jsonl", n=16).read_text().splitlines()):
        rows.append(json.dumps({**json.loads(line), "label": i % 2 == 0}))
    data = tmp_path / "kto.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    settings = [
        "--model", str(tiny_model_dir), "--data", str(data), "--max_length", "96", "--max_prompt_length", "64",
        "--train.lr", "3e-3", "--train.batch_size", "8", "--train.max_steps", "3", "--train.schedule", "constant",
        "--train.device", "cpu", "--train.save_every", "100",
    ]
    ddp_out, single_out = _ddp_and_single("kto", settings, tmp_path)
    assert _max_abs_diff(_weights(ddp_out / "model"), _weights(single_out / "model")) <= 1e-5
    assert _max_abs_diff(_weights(single_out / "model"), _weights(tiny_model_dir)) > 1e-3
    z0 = {out: [x["reference_point"] for x in map(json.loads, (out / "log.jsonl").read_text().splitlines())
                if "reference_point" in x] for out in (ddp_out, single_out)}
    # z₀ (about 1.4 here) is a mean of summed log-prob differences taken after steps whose gradients
    # were summed in another order (an all-reduce of two partial sums): float32 rounding of the
    # weights, 1.9e-6 on the 2-core and on an AVX-512 machine. 2e-5 leaves 10x that; a process-local z₀
    # (from half the batch) would be another batch's mean altogether.
    assert z0[ddp_out] == pytest.approx(z0[single_out], rel=0, abs=2e-5) and max(z0[single_out]) > 0.1


def _torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).parent)
    assert proc.returncode == 0, _without_torch_info(proc.stderr)
    return proc


def test_online_loop_over_two_processes_makes_the_one_process_update(tmp_path):
    # 8 rows per iteration, minibatch 8 over 2 processes (4 each, micro-batches of 2), 2 epochs:
    # the summed gradients of the globally normalised loss are exactly one process's
    import online_ddp_worker
    from alignlab.train import Dist

    _torchrun(["online_ddp_worker.py", str(tmp_path / "ddp")])
    single = online_ddp_worker.run(tmp_path / "single", 8, Dist())
    ddp = torch.load(tmp_path / "ddp" / "toy.pt")
    # a toy model of O(1) weights: the two processes' gradients are summed in another order than one
    # process sums them, a float32 ulp or two per step; 1e-6 covers the few steps taken
    for name, value in single.state_dict().items():
        assert torch.allclose(ddp[name], value, atol=1e-6), name
    logs = {k: [json.loads(x) for x in (tmp_path / k / "log.jsonl").read_text().splitlines()] for k in ("ddp", "single")}
    for a, b in zip(logs["ddp"], logs["single"]):
        assert a["samples"] == b["samples"] == 8
        # averaged over processes: a mean of O(1) rewards in another summation order, float32 rounding
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["dropped_samples"] == 2 and b["dropped_samples"] == 1  # counts add up
        for key in ("loss", "abs_err", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_online_loop_with_uneven_shares_does_not_hang(tmp_path):
    # 7 rows: process 0 holds 4, process 1 holds 3; with minibatch 8 the step still waits for both
    _torchrun(["online_ddp_worker.py", str(tmp_path), "7"])
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["samples"] for x in log] == [7, 7, 7]


def test_a_recipe_under_torchrun_trains_in_parallel_and_samples_once(tmp_path):
    # the tiny quickstart plus GRPO and PPO: training stages run on both processes, the sampling and
    # evaluation stages on process 0 alone; every stage finishes and each log is written once
    from tiny_recipe import tiny_recipe

    recipe = tiny_recipe()
    stages = recipe["stages"]
    recipe["stages"] = {**{k: v for k, v in stages.items() if k != "evaluate" and k != "report"}, "grpo": {
        "model": "@sft/model", "prompts": "@task/data/prompts_train.jsonl", "reward": {"type": "gold", "task": "sentiment"},
        "samples_per_prompt": 2, "sampling": {"max_new_tokens": 8},
        "train": {"iterations": 2, "prompts_per_iteration": 4, "minibatch_size": 8, "lr": 1e-3, "save_every": 1,
                  "device": "cpu"},
    }, "ppo": {
        "model": "@sft/model", "prompts": "@task/data/prompts_train.jsonl", "reward": {"type": "gold", "task": "sentiment"},
        "kl": {"beta": 0.05, "target": 4.0, "horizon": 100}, "sampling": {"max_new_tokens": 8},
        "train": {"update_epochs": 2, "iterations": 2, "prompts_per_iteration": 4, "minibatch_size": 2, "lr": 1e-3, "save_every": 1,
                  "device": "cpu"},
    }, "evaluate": stages["evaluate"], "report": stages["report"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    proc = _torchrun(["-m", "alignlab.cli", "run", str(path), "--out", str(tmp_path / "run")], timeout=600)
    run = tmp_path / "run"
    assert all((run / name / "done.json").exists() for name in recipe["stages"]), proc.stderr[-3000:]
    grpo_log = [json.loads(x) for x in (run / "grpo" / "log.jsonl").read_text().splitlines()]
    assert [x["samples"] for x in grpo_log] == [8, 8]  # 4 prompts x 2 samples over both processes
    sft_log = [json.loads(x) for x in (run / "sft" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in sft_log if "loss" in x] == list(range(1, 9))
    assert proc.stderr.count("grpo: done in") == 1
    ppo_log = [json.loads(x) for x in (run / "ppo" / "log.jsonl").read_text().splitlines()]
    assert [x["samples"] for x in ppo_log] == [4, 4]  # whitening and the critic's gradients span both
    assert (run / "ppo" / "critic" / "config.json").exists()


def test_a_stage_that_does_not_train_in_parallel_runs_on_process_zero_only(tmp_path, monkeypatch):
    import threading

    from alignlab.files import write_text_atomic
    from alignlab.pipeline import runner
    from alignlab.pipeline.recipe import PlannedStage

    calls = []
    stage = PlannedStage("evaluate", "evaluate", None, lambda cfg, out: calls.append(os.environ["WORLD_SIZE"]) or {}, [])
    monkeypatch.setattr(runner, "WAIT_POLL_S", 0.01)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert runner._run_stage(stage, tmp_path) == {} and calls == ["1"]  # alone: it sees a world of one
    monkeypatch.setenv("RANK", "1")
    # written as the stage writes it (atomically): a plain write_text could be polled half-written
    timer = threading.Timer(0.2, lambda: write_text_atomic(tmp_path / "done.json", '{"config_hash": "x"}'))
    timer.start()
    assert runner._run_stage(stage, tmp_path) is None and calls == ["1"]  # waited for process 0's done mark
    assert os.environ["WORLD_SIZE"] == "2"


def test_redo_under_torchrun_deletes_on_process_zero_before_the_others_look(tmp_path, monkeypatch):
    import threading

    from alignlab.pipeline import runner
    from alignlab.pipeline.recipe import PlannedStage

    stage = PlannedStage("dpo", "dpo", None, None, [])
    (tmp_path / "dpo").mkdir()
    (tmp_path / "dpo" / "done.json").write_text('{"config_hash": "old"}')
    monkeypatch.setattr(runner, "WAIT_POLL_S", 0.01)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-7")
    monkeypatch.setenv("RANK", "1")
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (runner._redo_from([stage], tmp_path), done.set()))
    waiter.start()
    assert not done.wait(0.2)  # process 1 deletes nothing and waits for process 0
    assert (tmp_path / "dpo" / "done.json").exists()
    monkeypatch.setenv("RANK", "0")
    runner._redo_from([stage], tmp_path)
    assert not (tmp_path / "dpo").exists() and (tmp_path / ".redo-launch-7").exists()
    waiter.join(5)
    assert done.is_set()


def test_cuda_without_an_index_means_this_processs_gpu(monkeypatch):
    # torch.cuda.set_device refuses a bare "cuda", and a user writes `device: cuda`
    from alignlab.train.distributed import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert pick_device("cuda") == torch.device("cuda", 0) == pick_device("auto")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device("cuda") == torch.device("cuda", 3) == pick_device("auto")
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")
