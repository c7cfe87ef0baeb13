"""FSDP2 on CPU: two processes under torchrun (gloo), each holding half of every weight, its gradient
and its optimizer state, train exactly as one process holding everything.

The data and settings are test_distributed's: 25 examples in batches of 8 make a last batch of one,
which leaves one process without an example of its own in that step (it runs a zero-weighted pass to
join the others' collectives).
"""

from __future__ import annotations

import json
import shutil

import pytest
from test_distributed import WORDS, _ddp_and_single, _max_abs_diff, _torchrun, _weights, _write_sft_data


def _weights_file(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same_training(a: dict, b: dict) -> None:
    """Weights of the same run replicated and sharded: 1e-5, except the attention key bias, whose true
    gradient is 0 (it shifts all of a query's scores alike): its float noise, which Adam scales up,
    reached 1.3e-5 when one process also ran zero-weighted passes (other summation orders)."""
    key_bias = {k for k in a if k.endswith("attn.c_attn.bias")}
    assert _max_abs_diff({k: v for k, v in a.items() if k not in key_bias},
                         {k: v for k, v in b.items() if k not in key_bias}) <= 1e-5
    assert _max_abs_diff(a, b) <= 1e-4


def _torchrun_stage(args: list[str]) -> None:
    _torchrun(["-m", "alignlab.cli", *args])


def _sft_settings(model, data) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--max_length", "96", "--max_prompt_length", "64",
            "--train.lr", "3e-3", "--train.batch_size", "8", "--train.max_steps", "4", "--train.schedule", "constant",
            "--train.device", "cpu", "--train.save_every", "100", "--train.parallel", "fsdp"]


def test_fsdp_sft_gives_the_same_weights_as_one_process(tiny_model_dir, tmp_path):
    data = _write_sft_data(tmp_path / "sft.jsonl", n=25)
    fsdp_out, single_out = _ddp_and_single("sft", [*_sft_settings(tiny_model_dir, data), "--train.keep_checkpoints", "true"],
                                           tmp_path)
    # it was sharded: each process wrote its part of the final checkpoint, and no whole-model file
    final = fsdp_out / "checkpoints" / "step-000004"
    assert sorted(p.name for p in (final / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (final / "model.safetensors").exists()
    start, fsdp, single = _weights(tiny_model_dir), _weights(fsdp_out / "model"), _weights(single_out / "model")
    # the gathered model is a plain transformers directory with every weight
    assert fsdp.keys() == single.keys()
    assert _max_abs_diff(fsdp, single) <= 1e-5
    assert _max_abs_diff(single, start) > 1e-3, "training did not move the weights"
    fsdp_log = [json.loads(x) for x in (fsdp_out / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    single_log = [json.loads(x) for x in (single_out / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    for key in ("loss", "grad_norm"):
        assert [x[key] for x in fsdp_log] == pytest.approx([x[key] for x in single_log], rel=1e-5), key


def test_fsdp_lora_trains_as_one_process_resumes_and_saves_a_merged_model(tiny_model_dir, tmp_path):
    # LoRA under FSDP2: the frozen base is sharded with the adapters, only the adapters train; the
    # checkpoints hold the adapters' shards (and their optimizer state) only, and the final model is
    # the gathered weights with the adapters folded in, a plain transformers directory
    data = _write_sft_data(tmp_path / "sft.jsonl", n=25)
    settings = [*_sft_settings(tiny_model_dir, data), "--lora.r", "4", "--lora.alpha", "8", "--train.keep_checkpoints", "true",
                "--train.max_steps", "6", "--train.save_every", "3"]
    fsdp_out, single_out = _ddp_and_single("sft", settings, tmp_path)
    start, fsdp, single = _weights(tiny_model_dir), _weights(fsdp_out / "model"), _weights(single_out / "model")
    assert fsdp.keys() == single.keys() == start.keys()
    assert _max_abs_diff(fsdp, single) <= 1e-5
    assert _max_abs_diff(single, start) > 1e-3, "training did not move the weights"
    import torch.distributed.checkpoint as dcp

    saved = dcp.FileSystemReader(str(fsdp_out / "checkpoints" / "step-000006" / "sharded")).read_metadata()
    model_keys = {k.removeprefix("model.") for k in saved.state_dict_metadata if k.startswith("model.")}
    assert model_keys and all(".lora_" in k for k in model_keys), sorted(model_keys)[:5]

    # resumed from the step-3 checkpoint (the adapters' shards and their AdamW moments): the same weights
    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp_out, resumed)
    for later in ("step-000006", "latest"):
        path = resumed / "checkpoints" / later
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for done in ("done.json", "model", "metrics.json"):
        path = resumed / done
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _torchrun_stage(["sft", "--out", str(resumed), *settings, "--train.micro_batch_size", "2"])
    assert _max_abs_diff(_weights(resumed / "model"), fsdp) == 0.0


def _write_pairs(path, n: int):
    rows = [json.dumps({"prompt": f"the film {i % 5}", "chosen": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(2 + i % 4)),
                        "rejected": "not " + " ".join(WORDS[(2 * i + j) % len(WORDS)] for j in range(1 + i % 3))}) for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# A reward model's pairwise loss sees only r(chosen) - r(rejected), so a weight that shifts every
# reward alike (the final layer norm's bias, through the score head) has a true gradient of exactly 0;
# the attention key bias shifts every score of a query alike, invisible to softmax. Their computed
# gradients are float noise, which Adam scales up to steps of about the learning rate, differently
# for each summation order (DDP shows the same 9e-4 on ln_f.bias): they are compared by the
# rewards they give instead, not weight by weight.
NO_TRUE_GRADIENT = {"dpo": set(), "reward-model": {"transformer.ln_f.bias", "transformer.h.0.attn.c_attn.bias",
                                                   "transformer.h.1.attn.c_attn.bias"}}


@pytest.mark.parametrize("stage", ["dpo", "dpo-live", "reward-model"])
def test_fsdp_preference_stages_give_the_same_weights_as_one_process(stage, tiny_model_dir, tmp_path):
    # 30 pairs, a fifth held out by prompt: the held-out evaluation runs the sharded model on every process.
    # dpo: reference log-probs computed before training; dpo-live: a frozen reference sharded like the policy
    data = _write_pairs(tmp_path / "pairs.jsonl", n=30)
    live = ["--ref_mode", "live"] if stage == "dpo-live" else []
    stage = stage.removesuffix("-live")
    settings = [*live, "--model", str(tiny_model_dir), "--data", str(data), "--max_length", "64", "--max_prompt_length", "16",
                "--eval_fraction", "0.2", "--train.lr", "3e-3", "--train.batch_size", "8", "--train.max_steps", "4",
                "--train.schedule", "constant", "--train.device", "cpu", "--train.save_every", "100",
                "--train.parallel", "fsdp"]
    fsdp_out, single_out = _ddp_and_single(stage, settings, tmp_path)
    start, fsdp, single = _weights(tiny_model_dir), _weights(fsdp_out / "model"), _weights(single_out / "model")
    assert fsdp.keys() == single.keys()
    compared = [k for k in single if k not in NO_TRUE_GRADIENT[stage]]
    assert _max_abs_diff({k: fsdp[k] for k in compared}, {k: single[k] for k in compared}) <= 1e-5
    assert _max_abs_diff({k: single[k] for k in compared if k in start}, {k: start[k] for k in compared if k in start}) > 1e-3
    fsdp_eval, single_eval = (json.loads((out / "metrics.json").read_text())["eval"] for out in (fsdp_out, single_out))
    assert fsdp_eval.keys() == single_eval.keys() and fsdp_eval
    for key, value in single_eval.items():
        if stage == "reward-model" and key in ("chosen_reward", "rejected_reward"):
            continue  # the rewards' common level is the shift above; their margin is compared
        # held-out figures of nearly equal models: float32 rounding of the weights above, 1e-4 relative
        assert fsdp_eval[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_fsdp_run_killed_mid_training_resumes_to_the_same_weights(tiny_model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = _write_sft_data(tmp_path / "sft.jsonl", n=25)
    settings = [*_sft_settings(tiny_model_dir, data), "--train.max_steps", "12", "--train.save_every", "2"]
    whole, single = _ddp_and_single("sft", settings, tmp_path)  # uninterrupted, on 2 processes and on 1

    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "alignlab.cli", "sft", "--out", str(out), *settings, "--train.micro_batch_size", "2"]
    env.update(CI="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    latest, deadline = out / "checkpoints" / "latest", time.monotonic() + 240
    while not (latest.exists() and latest.read_text().strip() != ""):  # the first sharded checkpoint (step 2)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, mid-run
    proc.wait()
    killed_at = int(latest.read_text().strip().removeprefix("step-"))
    assert not (out / "done.json").exists() and killed_at < 12, "the kill came after the run had finished"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [x["step"] for x in log] == list(range(1, 13))  # every step logged once across the kill
    final = _weights(out / "model")
    # a resume restores the shards, the optimizer's moments and the schedule exactly: the uninterrupted
    # 2-process run's weights to the bit, and the 1-process run's to float32 rounding
    assert _max_abs_diff(final, _weights(whole / "model")) == 0.0
    assert _max_abs_diff(final, _weights(single / "model")) <= 1e-5


@pytest.mark.parametrize("stage", ["grpo", "ppo", "grpo-uneven"])
def test_fsdp_online_stages_train_as_ddp_does(stage, tiny_model_dir, tmp_path, monkeypatch):
    # the same 2 processes, the same per-process sampling seeds: sharded or replicated, every process
    # draws the same samples from the same weights and takes the same update (generate keeps the
    # sharded processes in step until the last row of either is done). The reward must vary: with
    # none, the only gradient is the KL's, of float-noise size, which Adam scales up to full steps.
    import yaml

    (tmp_path / "fsdp_toy_reward.py").write_text(
        "def e_count(prompts, completions):\n    return [float(c.count('e')) for c in completions]\n"
        "def e_count_but_film(prompts, completions):  # no score for one prompt: its group is dropped\n"
        "    return [float('nan') if p == 'the film' else float(c.count('e')) for p, c in zip(prompts, completions)]\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": " ".join(WORDS[i : i + 2])}) + "\n" for i in range(8)))
    config = tmp_path / "grpo.yaml"
    # PPO's value head sits on the sharded policy's last hidden state and stays whole on every process
    # grpo-uneven: a prompt without a score drops its group on one process, which then holds fewer
    # samples than the other: the sharded log-prob passes must still run in step
    per_stage = {"grpo": {"samples_per_prompt": 4}, "ppo": {"critic": "shared"},
                 "grpo-uneven": {"samples_per_prompt": 4, "reward": {"type": "callable",
                                                                    "function": "fsdp_toy_reward:e_count_but_film"}}}[stage]
    kind = stage.removesuffix("-uneven")
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "prompts": str(prompts), "reward": {"type": "callable", "function": "fsdp_toy_reward:e_count"},
        "sampling": {"max_new_tokens": 8, "batch_size": 8}, **per_stage,
        "train": {"iterations": 3, "prompts_per_iteration": 4, "minibatch_size": 4 if stage == "ppo" else 8,
                  "update_epochs": 2, "lr": 3e-3, "device": "cpu", "save_every": None, "keep_checkpoints": True,
                  "snapshot_every": 2},
    }))
    outs = {}
    for parallel in ("ddp", "fsdp"):
        outs[parallel] = tmp_path / parallel
        _torchrun_stage([kind, "--out", str(outs[parallel]), "--config", str(config), "--train.parallel", parallel,
                         "--train.micro_batch_size", "2" if stage == "ppo" else "4"])
    logs = {p: [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()] for p, out in outs.items()}
    if stage == "grpo-uneven":
        assert sum(x["dropped_samples"] for x in logs["fsdp"]) > 0
    for a, b in zip(logs["ddp"], logs["fsdp"]):
        assert a["response_tokens"] == b["response_tokens"] and a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7)
    weights = {p: _weights(out / "model") for p, out in outs.items()}
    _assert_same_training(weights["ddp"], weights["fsdp"])
    assert _max_abs_diff(weights["ddp"], _weights(tiny_model_dir)) > 1e-3
    assert (outs["fsdp"] / "checkpoints" / "step-000003" / "sharded").is_dir()
    # the snapshot after iteration 2: gathered from the shards into a plain transformers directory
    snapshots = {p: _weights(out / "snapshots" / "iter-00002") for p, out in outs.items()}
    _assert_same_training(snapshots["ddp"], snapshots["fsdp"])
    if stage == "ppo":  # the value head: replicated, its gradients summed like the shards'
        heads = {p: _weights_file(out / "checkpoints" / "step-000003" / "value.safetensors") for p, out in outs.items()}
        assert _max_abs_diff(heads["ddp"], heads["fsdp"]) <= 1e-5


def test_cpu_offload_is_refused_where_it_cannot_act(tiny_model_dir, tmp_path):
    from pydantic import ValidationError

    from alignlab.train.settings import TrainSettings

    with pytest.raises(ValidationError, match="set parallel: fsdp too"):
        TrainSettings(cpu_offload=True)
    # torch offloads shards to CPU memory for a GPU to compute; on a CPU it fails deep inside the first
    # forward, so alignlab refuses it before loading anything else
    data = _write_sft_data(tmp_path / "sft.jsonl", n=8)
    with pytest.raises(AssertionError, match="the shards in CPU memory while a GPU computes"):
        _torchrun_stage(["sft", "--out", str(tmp_path / "out"), *_sft_settings(tiny_model_dir, data),
                         "--train.cpu_offload", "true"])


def test_what_fsdp_does_not_cover_yet_is_refused_before_any_work(tiny_model_dir):
    import torch

    from alignlab.models import load_causal_lm
    from alignlab.train.engine import _check_shardable

    model = load_causal_lm(tiny_model_dir)
    second = load_causal_lm(tiny_model_dir)
    with pytest.raises(ValueError, match="'value' is a model of its own"):
        _check_shardable(model, {"value": second}, "ppo", offload_from=None)
    head = torch.nn.Linear(32, 1)  # a value head is small: kept whole beside the shards
    _check_shardable(model, {"value": head}, "ppo", offload_from=None)


def test_fsdp_kto_and_its_reference_point_match_one_process(tiny_model_dir, tmp_path):
    # z₀ is scored on every process's share of the global batch's mismatched pairs; with a sharded
    # policy a process with fewer chunks scores spare ones (and discards them) to keep in step
    rows = [json.dumps({**json.loads(line), "label": i % 3 != 0})
            for i, line in enumerate(_write_sft_data(tmp_path / "sft.jsonl", n=13).read_text().splitlines())]
    data = tmp_path / "kto.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    fsdp_out, single_out = _ddp_and_single("kto", _sft_settings(tiny_model_dir, data), tmp_path)
    assert _max_abs_diff(_weights(fsdp_out / "model"), _weights(single_out / "model")) <= 1e-5
    z0 = {out: [x["reference_point"] for x in map(json.loads, (out / "log.jsonl").read_text().splitlines())
                if "reference_point" in x] for out in (fsdp_out, single_out)}
    # as in test_distributed's KTO test: float32 rounding of the weights, 2e-5 leaves 10x the 1.9e-6 seen
    assert z0[fsdp_out] == pytest.approx(z0[single_out], rel=0, abs=2e-5) and max(z0[single_out]) > 0.1
