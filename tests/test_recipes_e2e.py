"""End to end: a small sentiment recipe through every stage, checked for learning and artifacts.

One module-scoped run of task data -> pretrain -> SFT -> sampled gold-labelled pairs -> reward
model -> DPO -> evaluate -> report (about a minute on two CPU cores), then each test checks one
promise: that the models learnt what they were meant to, that their directories load with plain
transformers, that every stage leaves its files, and that a rerun skips finished work or refuses
changed settings.

The sizes are the quickstart's scaled down until the whole run fits the test budget while the
effects still stand well clear of noise: ~2000 training and ~500 held-out pairs (a held-out
accuracy at chance has a standard error of about 0.022), and 256 evaluation samples per model
(a gold-reward standard error of about 0.025).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import pytest
import torch
import yaml

from alignlab.pipeline.recipe import RecipeError
from alignlab.pipeline.runner import run_recipe

pytestmark = pytest.mark.slow

TRAIN = {"batch_size": 32, "epochs": 1, "warmup_ratio": 0.05, "save_every": None}
DPO_EVAL_EVERY = 64  # half of DPO's 128 steps: one held-out evaluation mid-way, one at the end

RECIPE = {
    "name": "e2e",
    "stages": {
        "task": {"type": "task_data", "task": "sentiment", "sft_size": 2000, "train_prompts": 600, "test_prompts": 128},
        # a constant learning rate leaves the base model short of converged, so SFT still has
        # something to learn (and its loss a visible way down)
        "pretrain": {"task": "sentiment", "corpus_size": 6000, "vocab_size": 1024, "hidden_size": 64, "num_layers": 2,
                     "num_heads": 4, "max_length": 64, "train": {**TRAIN, "lr": 3e-3, "schedule": "constant"}},
        "sft": {"model": "@pretrain/model", "data": "@task/data/sft.jsonl", "max_length": 64, "max_prompt_length": 32,
                "train": {**TRAIN, "lr": 2e-3}},
        # pairs whose gold rewards differ by more than 0.2: fewer, but clearly ordered
        "pairs": {"type": "sample_pairs", "model": "@sft/model", "prompts": "@task/data/prompts_train.jsonl",
                  "task": "sentiment", "samples_per_prompt": 4, "min_gap": 0.2, "eval_fraction": 0.2,
                  "sampling": {"max_new_tokens": 32, "batch_size": 128}},
        "reward_model": {"model": "@sft/model", "data": "@pairs/data/train.jsonl", "eval_data": "@pairs/data/test.jsonl",
                         "max_length": 64, "max_prompt_length": 32, "train": {**TRAIN, "lr": 2e-3, "epochs": 2}},
        "dpo": {"model": "@sft/model", "data": "@pairs/data/train.jsonl", "eval_data": "@pairs/data/test.jsonl",
                "beta": 0.1, "max_length": 64, "max_prompt_length": 32,
                "train": {**TRAIN, "lr": 3e-4, "epochs": 2, "eval_every": DPO_EVAL_EVERY}},
        "evaluate": {"models": {"sft": "@sft/model", "dpo": "@dpo/model"}, "reference": "@sft/model",
                     "prompts": "@task/data/prompts_test.jsonl", "task": "sentiment",
                     "reward_model": "@reward_model/model", "samples_per_prompt": 2,
                     "sampling": {"max_new_tokens": 32, "batch_size": 128}},
        "report": {"evaluate": "@evaluate", "reward_model": "@reward_model", "baseline": "sft",
                   "title": "e2e: SFT against DPO"},
    },
}
STAGES = list(RECIPE["stages"])
TRAINING_STAGES = ["pretrain", "sft", "reward_model", "dpo"]


class Run:
    def __init__(self, recipe: Path, run_dir: Path, results: dict, seconds: float):
        self.recipe, self.dir, self.results, self.seconds = recipe, run_dir, results, seconds

    def metrics(self, stage: str) -> dict:
        return json.loads((self.dir / stage / "metrics.json").read_text())

    def log(self, stage: str) -> list[dict]:
        return [json.loads(x) for x in (self.dir / stage / "log.jsonl").read_text().splitlines()]

    def train_log(self, stage: str) -> list[dict]:
        return [x for x in self.log(stage) if "loss" in x]


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    base = tmp_path_factory.mktemp("e2e")
    recipe = write_recipe(base / "e2e.yaml", RECIPE)
    start = time.perf_counter()
    results = run_recipe(recipe, base / "run")
    return Run(recipe, base / "run", results, time.perf_counter() - start)


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


# --- learning ---------------------------------------------------------------------------------


def test_every_stage_ran(run):
    assert list(run.results) == STAGES


def test_pretrain_and_sft_losses_fell(run):
    pre, sft = run.train_log("pretrain"), run.train_log("sft")
    # pretraining starts near ln(vocab) and ends far below it
    assert pre[0]["loss"] == pytest.approx(math.log(1024), abs=0.3)
    assert mean(x["loss"] for x in pre[-10:]) < 0.5 * mean(x["loss"] for x in pre[:10])
    # SFT continues from there: the mean of its last 10 steps is clearly below its first 10
    assert mean(x["loss"] for x in sft[-10:]) < mean(x["loss"] for x in sft[:10]) - 0.1


def test_reward_model_ranks_held_out_pairs_well_above_chance(run):
    m = run.metrics("reward_model")
    assert m["eval_pairs"] >= 300
    # chance is 0.5 with a standard error of ~0.022 on this many pairs: 0.65 is ~7 of them above
    assert m["eval"]["accuracy"] >= 0.65
    assert m["eval"]["reward_margin"] > 0
    train = run.train_log("reward_model")
    assert mean(x["loss"] for x in train[-10:]) < mean(x["loss"] for x in train[:10])


def test_dpo_improves_held_out_preferences(run):
    log = run.train_log("dpo")
    assert abs(log[0]["loss"] - math.log(2)) < 1e-4  # policy == reference before the first update
    evals = [x for x in run.log("dpo") if "eval/accuracy" in x]
    steps = [x["step"] for x in evals]
    # periodic evaluations, then the final one (which coincides with the last periodic one when
    # the step count is a multiple of the period)
    assert steps[:2] == [DPO_EVAL_EVERY, 2 * DPO_EVAL_EVERY] and len(steps) in (2, 3)
    mid, end = evals[0], evals[-1]
    assert 0 < mid["eval/reward_margin"] < end["eval/reward_margin"]
    # better than chance by three standard errors of an accuracy at chance (0.5 +- 0.022 for ~530
    # held-out pairs). Measured: 0.572 at this seed; 0.535-0.574 over seeds 0-1 with or without the
    # fused GELU (transformers 5.24); a weak ranking, where DPO's gold-reward gain below is strong.
    held_out = sum(1 for _ in open(run.dir / "pairs" / "data" / "test.jsonl"))
    assert end["eval/accuracy"] > 0.5 + 3 * math.sqrt(0.25 / held_out)
    assert run.metrics("dpo")["eval"]["accuracy"] == pytest.approx(end["eval/accuracy"])


def test_dpo_beats_sft_on_gold_reward_at_a_finite_kl(run):
    models = run.metrics("evaluate")["models"]
    sft, dpo = models["sft"], models["dpo"]
    noise = math.hypot(sft["gold_se"], dpo["gold_se"])
    assert dpo["gold_mean"] > sft["gold_mean"] + 3 * noise, (sft, dpo)
    assert 0 < dpo["kl_mean"] < 50 and math.isfinite(dpo["kl_mean"])
    assert abs(sft["kl_mean"]) < 1e-4  # the reference is SFT itself
    assert dpo["samples"] == sft["samples"] == 2 * RECIPE["stages"]["task"]["test_prompts"]
    # the learnt reward model agrees with the gold one about which model is better
    assert dpo["proxy_mean"] > sft["proxy_mean"]
    report = run.metrics("report")
    assert report["gold_gain_over_baseline"]["dpo"] == pytest.approx(dpo["gold_mean"] - sft["gold_mean"])


# --- artifacts --------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_policies_load_and_generate_with_plain_transformers(run, stage):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = run.dir / stage / "model"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    batch = tokenizer(["the film was", "i thought this movie"], return_tensors="pt", padding=True,
                      padding_side="left")
    torch.manual_seed(0)
    out = model.generate(**batch, max_new_tokens=12, do_sample=True, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[0] == 2 and out.shape[1] > batch["input_ids"].shape[1]
    text = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip()


def test_reward_model_loads_with_plain_transformers_and_scores_the_same(run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignlab.models import load_reward_model, reward_scores

    path = run.dir / "reward_model" / "model"
    samples = [json.loads(x) for x in (run.dir / "evaluate" / "data" / "samples.jsonl").read_text().splitlines()]
    texts = [s["prompt"] + s["completion"] for s in samples[:16]]
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    plain = AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert plain.config.num_labels == 1
    ours = load_reward_model(path).eval()
    with torch.no_grad():
        plain_scores = plain(**batch).logits[:, 0]
        our_scores = reward_scores(ours, batch["input_ids"], batch["attention_mask"])
    assert plain_scores.std() > 0  # not a constant head
    torch.testing.assert_close(plain_scores, our_scores, rtol=0, atol=1e-5)


def test_report_names_both_models(run):
    report = run.dir / "report"
    text = (report / "report.md").read_text()
    assert "| sft |" in text and "| dpo |" in text
    assert "held-out pairwise accuracy" in text
    assert (report / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_stage_leaves_metrics_done_and_a_step_log(run):
    for stage in STAGES:
        d = run.dir / stage
        assert (d / "metrics.json").is_file() and (d / "done.json").is_file(), stage
        assert set(run.metrics(stage)) == set(run.results[stage]), stage  # what run_recipe returned
    for stage in TRAINING_STAGES:
        steps = run.metrics(stage)["steps"]
        assert [x["step"] for x in run.train_log(stage)] == list(range(1, steps + 1)), stage
        assert (run.dir / stage / "model" / "config.json").is_file()
    assert {p.name for p in (run.dir / "pairs" / "data").iterdir()} == {"train.jsonl", "test.jsonl"}
    assert (run.dir / "evaluate" / "data" / "samples.jsonl").is_file()


# --- rerunning --------------------------------------------------------------------------------


def test_a_second_run_skips_every_stage_and_touches_nothing(run):
    before = mtimes(run.dir)
    start = time.perf_counter()
    results = run_recipe(run.recipe, run.dir)
    seconds = time.perf_counter() - start
    assert results == {}
    assert mtimes(run.dir) == before
    assert seconds < min(10.0, 0.2 * run.seconds)


def test_the_command_ends_with_the_headline_result(run):
    # `alignlab run` prints the report's result, not only "all stages finished"
    from typer.testing import CliRunner

    from alignlab.cli import app

    result = CliRunner().invoke(app, ["run", str(run.recipe), "--out", str(run.dir)])
    assert result.exit_code == 0, result.output
    report = run.metrics("report")
    dpo, sft = report["models"]["dpo"], report["models"]["sft"]
    gain = report["gold_gain_over_baseline"]["dpo"]
    assert f"dpo: gold reward {gain:+.3f} over sft ({sft['gold_mean']:.3f} -> {dpo['gold_mean']:.3f}), " \
           f"KL {dpo['kl_mean']:.2f} nats" in result.stdout
    accuracy = run.metrics("reward_model")["eval"]["accuracy"]
    assert f"reward model: held-out pairwise accuracy {accuracy:.3f}" in result.stdout
    assert f"report: {run.dir / 'report' / 'report.md'}" in result.stdout


def test_changed_settings_of_a_finished_stage_ask_for_redo(run, tmp_path):
    changed = copy.deepcopy(RECIPE)
    changed["stages"]["dpo"]["beta"] = 0.5
    recipe = write_recipe(tmp_path / "e2e.yaml", changed)
    before = mtimes(run.dir)
    with pytest.raises(RecipeError) as info:
        run_recipe(recipe, run.dir)
    message = str(info.value)
    assert "--redo dpo" in message and "'dpo'" in message
    assert mtimes(run.dir) == before  # refused before touching anything
