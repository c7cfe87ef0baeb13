"""Rejection-sampling fine-tuning: the selection rule, the rounds on a tiny GPT-2 (it learns a toy
reward), and resume: a finished round is skipped, an unfinished one is redone or continued exactly."""

from __future__ import annotations

import importlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from user_modules import importable_module

from alignlab.data.readers import write_jsonl
from alignlab.data.tokenize import tokenize_prompts
from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.rollout import SamplingSettings, generate
from alignlab.stages.online.rejection_sampling import (
    RejectionSamplingConfig,
    run,
    select_samples,
    training_rows,
)
from alignlab.train import engine

NAN = float("nan")

# A user's reward module, imported by "module:function" like a real one. The letter "e" is rare
# in a random tiny model's samples, so raising its share is something a few SFT steps on the
# best samples can visibly do.
USER_MODULE = "alignlab_test_rejection_rewards"
USER_CODE = '''
def e_fraction(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]
'''

PROMPTS = ["the film was", "i loved", "hello", "the acting was", "a dull", "not the worst", "user:", "the cast"]
TRAIN = {"lr": 3e-2, "batch_size": 8, "epochs": 8, "schedule": "constant", "save_every": 4}


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    with importable_module(tmp_path_factory.mktemp("user_rewards"), USER_MODULE, USER_CODE) as name:
        yield name


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rs_data") / "prompts.jsonl"
    write_jsonl(path, [{"prompt": p} for p in PROMPTS])
    return path


def make_config(model_dir, prompts_file, user_module, **overrides) -> RejectionSamplingConfig:
    return RejectionSamplingConfig.model_validate({
        "model": str(model_dir), "prompts": str(prompts_file),
        "reward": {"type": "callable", "function": f"{user_module}:e_fraction"},
        "rounds": 2, "samples_per_prompt": 8, "max_length": 32, "max_prompt_length": 8,
        "sampling": {"max_new_tokens": 12}, "train": TRAIN, **overrides,
    })


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, prompts_file, user_module, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rs") / "stage"
    return out, run(make_config(tiny_model_dir, prompts_file, user_module), out)


# --- pure pieces ------------------------------------------------------------------------------


def test_select_best_per_prompt_nan_never_wins_and_min_reward_filters():
    scores = [[0.1, 0.7, 0.3], [NAN, NAN, NAN], [NAN, -1.0, -3.0], [0.5, 0.5, 0.2]]
    assert select_samples(scores, "best") == [[1], [], [1], [0]]
    assert select_samples(scores, "best", min_reward=0.2) == [[1], [], [], [0]]


def test_select_above_threshold_keeps_every_sample_at_or_above():
    scores = [[0.1, 0.7, 0.3], [NAN, 0.9, NAN], [-1.0, -2.0, 0.0]]
    assert select_samples(scores, "above_threshold", min_reward=0.3) == [[1, 2], [1], []]
    with pytest.raises(ValueError, match="min_reward"):
        select_samples(scores, "above_threshold")


def test_training_rows_mask_the_prompt_and_cut_to_max_length():
    selection = {"prompt_ids": [[1, 2], [3]], "completion_ids": [[4, 5, 6], [7, 8, 9, 10, 11]]}
    rows = training_rows(selection, max_length=5)
    assert [r.input_ids for r in rows] == [[1, 2, 4, 5, 6], [3, 7, 8, 9, 10]]
    assert [r.loss_mask for r in rows] == [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]


def test_config_errors():
    base = {"model": "m", "prompts": "p.jsonl", "reward": {"type": "callable", "function": "a:b"}}
    assert RejectionSamplingConfig.model_validate(base).rounds == 3
    with pytest.raises(ValidationError, match="needs min_reward"):
        RejectionSamplingConfig.model_validate({**base, "keep": "above_threshold"})
    with pytest.raises(ValidationError, match="below max_length"):
        RejectionSamplingConfig.model_validate({**base, "max_length": 64, "max_prompt_length": 64})
    with pytest.raises(ValidationError, match="extra"):
        RejectionSamplingConfig.model_validate({**base, "epochs": 2})


# --- the stage --------------------------------------------------------------------------------


def fresh_reward(model_dir, prompts: list[str]) -> float:
    """Mean toy reward of new samples (seeds the stage never used), 8 per prompt, 3 seeds."""
    score = importlib.import_module(USER_MODULE).e_fraction  # on sys.path while `user_module` is active
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    ids = [p for p in tokenize_prompts(prompts, tokenizer, 8) for _ in range(8)]
    values = []
    for seed in (101, 202, 303):
        completions = generate(model, ids, SamplingSettings(max_new_tokens=12), pad_id=tokenizer.pad_token_id,
                               eos_id=tokenizer.eos_token_id, seed=seed)
        values += score(None, tokenizer.batch_decode(completions, skip_special_tokens=True))
    return sum(values) / len(values)


def test_rounds_raise_the_reward_and_write_their_files(full_run, tiny_model_dir):
    out, metrics = full_run
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds:
        assert r["samples"] == 8 * len(PROMPTS) and r["kept"] == len(PROMPTS) and r["steps"] == 8
        assert r["reward_mean_kept"] > r["reward_mean_all"]  # the best of 8 beats the average
        selected = out / f"round-{r['round']}" / "data" / "selected.jsonl"
        records = [json.loads(x) for x in selected.read_text().splitlines()]
        assert sorted(x["prompt"] for x in records) == sorted(PROMPTS)
        for x in records:  # the recorded reward is the reward of the recorded completion
            assert x["reward"] == pytest.approx(x["completion"].count("e") / max(len(x["completion"]), 1))
        assert sum(x["reward"] for x in records) / len(records) == pytest.approx(r["reward_mean_kept"])
        assert (out / f"round-{r['round']}" / "done.json").exists()
        assert not (out / f"round-{r['round']}" / "checkpoints").exists()  # dropped once the round's model is saved
    # round 1 samples from the policy after round 0: already better than the start
    assert rounds[1]["reward_mean_all"] > rounds[0]["reward_mean_all"]
    assert same_weights(out / "model", out / "round-1" / "model")
    assert (out / "done.json").exists() and json.loads((out / "metrics.json").read_text())["rounds"] == rounds

    start, final = fresh_reward(tiny_model_dir, PROMPTS), fresh_reward(out / "model", PROMPTS)
    assert final > start + 0.05, (start, final)  # measured ≈0.02 → 0.17


@pytest.mark.parametrize("lost", ["whole round", "model and marker"])
def test_rerun_redoes_only_the_unfinished_round_and_gives_the_same_model(full_run, tiny_model_dir, prompts_file,
                                                                         user_module, tmp_path, lost):
    first, first_metrics = full_run
    out = tmp_path / "stage"
    shutil.copytree(first, out)
    if lost == "whole round":
        shutil.rmtree(out / "round-1")
    else:
        shutil.rmtree(out / "round-1" / "model")
        (out / "round-1" / "done.json").unlink()
    round0 = mtimes(out / "round-0")
    metrics = run(make_config(tiny_model_dir, prompts_file, user_module), out)
    assert mtimes(out / "round-0") == round0  # round 0 was read, not redone
    assert (out / "round-1" / "done.json").exists()
    assert same_weights(out / "model", first / "model")  # deterministic: the same samples, the same SFT
    assert metrics["rounds"] == first_metrics["rounds"]


class Killed(Exception):
    pass


def test_a_run_killed_inside_a_round_resumes_from_its_checkpoint(full_run, tiny_model_dir, prompts_file,
                                                                 user_module, tmp_path, monkeypatch):
    first, _ = full_run
    out = tmp_path / "stage"
    save = engine.save_checkpoint

    def save_then_die(root, step, *args, **kwargs):
        saved = save(root, step, *args, **kwargs)
        if root.parent.name == "round-1" and step == 4:
            raise Killed
        return saved

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run(make_config(tiny_model_dir, prompts_file, user_module), out)
    monkeypatch.undo()
    assert (out / "round-0" / "done.json").exists() and not (out / "round-1" / "done.json").exists()
    selection = (out / "round-1" / "selection.json").stat().st_mtime_ns
    run(make_config(tiny_model_dir, prompts_file, user_module), out)
    assert (out / "round-1" / "selection.json").stat().st_mtime_ns == selection  # samples reused, not redrawn
    steps = [json.loads(x)["step"] for x in (out / "round-1" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # steps 5-8 after the resume, none repeated
    assert same_weights(out / "model", first / "model")


def test_more_rounds_continue_and_changed_settings_are_refused(full_run, tiny_model_dir, prompts_file,
                                                               user_module, tmp_path):
    first, first_metrics = full_run
    out = tmp_path / "stage"
    shutil.copytree(first, out)
    before = {r: mtimes(out / f"round-{r}") for r in (0, 1)}
    metrics = run(make_config(tiny_model_dir, prompts_file, user_module, rounds=3), out)
    assert {r: mtimes(out / f"round-{r}") for r in (0, 1)} == before
    assert metrics["rounds"][:2] == first_metrics["rounds"] and metrics["rounds"][2]["round"] == 2
    assert same_weights(out / "model", out / "round-2" / "model")
    with pytest.raises(ValueError, match="round-0 was finished with other settings"):
        run(make_config(tiny_model_dir, prompts_file, user_module, rounds=3, min_reward=0.01), out)


def test_a_round_that_keeps_nothing_leaves_the_policy_unchanged(tiny_model_dir, prompts_file, user_module, tmp_path):
    out = tmp_path / "stage"
    metrics = run(make_config(tiny_model_dir, prompts_file, user_module, rounds=1, min_reward=2.0), out)
    (only,) = metrics["rounds"]
    assert only["kept"] == 0 and only["steps"] == 0 and math.isnan(only["reward_mean_kept"])
    assert (out / "round-0" / "data" / "selected.jsonl").read_text() == ""
    assert same_weights(out / "model", tiny_model_dir)


def test_prompts_per_round_walks_through_a_seeded_shuffle(tiny_model_dir, prompts_file, user_module, tmp_path):
    out = tmp_path / "stage"
    metrics = run(make_config(tiny_model_dir, prompts_file, user_module, prompts_per_round=3, samples_per_prompt=2), out)
    seen = []
    for r in metrics["rounds"]:
        assert r["prompts"] == 3 and r["samples"] == 6 and r["kept"] == 3
        records = [json.loads(x) for x in (out / f"round-{r['round']}" / "data" / "selected.jsonl").read_text().splitlines()]
        seen.append({x["prompt"] for x in records})
    assert all(len(s) == 3 for s in seen) and not seen[0] & seen[1]  # consecutive slices of one shuffle


def test_lora_rounds_export_a_plain_merged_model(tiny_model_dir, prompts_file, user_module, tmp_path):
    out = tmp_path / "stage"
    run(make_config(tiny_model_dir, prompts_file, user_module, rounds=1, lora={"r": 4, "alpha": 8}), out)
    assert not (out / "model" / "adapter_config.json").exists()
    before, after = weights(tiny_model_dir), weights(out / "model")
    assert set(after) == set(before) and not any("lora" in k for k in after)
    changed = [k for k in before if k.endswith("attn.c_attn.weight")]
    assert changed and all(not torch.equal(before[k], after[k]) for k in changed)
