"""Each stage run for real on a tiny model and a small hand-written dataset.

The model (a 2-layer GPT-2 of width 32) and its tokenizer are built once per module from the very
texts the datasets use, and saved like any hub model; every stage reads it by path. Settings are
passed exactly as a recipe or the CLI would pass them (validated by the stage's config class).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from alignlab.data.collate import pad_rows
from alignlab.data.formats import load_preferences, load_sft
from alignlab.data.readers import write_jsonl
from alignlab.data.tokenize import tokenize_sft
from alignlab.models import load_causal_lm, load_reward_model, load_tokenizer, reward_scores
from alignlab.models.build import new_causal_lm, train_bpe_tokenizer
from alignlab.ops import sequence_logps, token_logps
from alignlab.stages import stage_type
from alignlab.tasks import get_task

LN2 = math.log(2.0)

# --- hand-written data ------------------------------------------------------------------------

DEMOS = [
    ("the film was", " a delight from start to finish"),
    ("the acting was", " superb and the cast shines"),
    ("i loved", " the soundtrack and the stunning pictures"),
    ("hello", " world this is a tiny corpus"),
]
POSITIVE = [" a delight", " superb and stunning", " i loved it", " a wonderful film", " great fun"]
NEUTRAL = [" a film about a town", " it has a plot", " the movie is long", " some actors appear"]
NEGATIVE = [" dull and tedious", " the worst film", " a boring mess", " awful and slow"]
PROMPTS = ["the film was", "my review:", "in short", "overall it is", "the movie was", "i think it was",
           "honestly", "to sum up", "verdict:", "in a word"]
HELD_OUT_PROMPTS = ["all in all", "my take:"]


def _corpus() -> list[str]:
    texts = [p + c for p, c in DEMOS]
    for prompt in PROMPTS + HELD_OUT_PROMPTS:
        texts += [prompt + r for r in POSITIVE + NEUTRAL + NEGATIVE]
    return texts * 3


def preference_records(prompts: list[str], shift: int = 0) -> list[dict]:
    """Positive-beats-negative pairs; which phrases meet varies with the prompt (and `shift`)."""
    return [
        {"prompt": p, "chosen": POSITIVE[(i + shift) % len(POSITIVE)], "rejected": NEGATIVE[(i + 2 * shift) % len(NEGATIVE)]}
        for i, p in enumerate(prompts)
    ] + [
        {"prompt": p, "chosen": POSITIVE[(i + 3) % len(POSITIVE)], "rejected": NEUTRAL[(i + shift) % len(NEUTRAL)]}
        for i, p in enumerate(prompts)
    ]


def ranking_records(prompts: list[str], shift: int = 0) -> list[dict]:
    """3-way rankings positive > neutral > negative, listed in a rotating order so the position
    of a response says nothing about its rank."""
    records = []
    for i, p in enumerate(prompts):
        ranked = [POSITIVE[(i + shift) % 5], NEUTRAL[(i + shift) % 4], NEGATIVE[(i + 2 * shift + 1) % 4]]
        order = [(i + j) % 3 for j in range(3)]  # position -> rank
        responses = [ranked[r] for r in order]
        ranking = sorted(range(3), key=lambda pos: order[pos])  # positions, best first
        records.append({"prompt": p, "responses": responses, "ranking": ranking})
    return records


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    """A freshly initialised tiny GPT-2 and a tokenizer trained on the test texts, saved to disk."""
    tokenizer = train_bpe_tokenizer(_corpus(), vocab_size=1000)
    model = new_causal_lm(tokenizer, arch="gpt2", hidden_size=32, num_layers=2, num_heads=2, max_positions=64)
    path = tmp_path_factory.mktemp("base")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def pretrained_model(base_model, tmp_path_factory) -> str:
    """The base model after a short full fine-tune on the test texts (as plain `text` records).

    LoRA starts from this one: on a random base, frozen embeddings of initial scale keep the
    logits near uniform whatever the adapters do, which is not the situation LoRA is for.
    """
    d = tmp_path_factory.mktemp("pretrained")
    write_jsonl(d / "corpus.jsonl", [{"text": t} for t in _corpus()])
    run_stage("sft", d / "stage", model=base_model, data=str(d / "corpus.jsonl"), max_length=64,
              train={**FAST, "lr": 1e-2, "batch_size": 16, "max_steps": 40})
    return str(d / "stage" / "model")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "demos.jsonl", [{"prompt": p, "completion": c} for p, c in DEMOS * 8])
    write_jsonl(d / "pairs.jsonl", preference_records(PROMPTS) + preference_records(PROMPTS, shift=1))
    write_jsonl(d / "pairs_eval.jsonl", preference_records(HELD_OUT_PROMPTS, shift=2))
    soft = [dict(r, label=0.8 if i % 2 else 0.9) for i, r in enumerate(preference_records(PROMPTS))]
    write_jsonl(d / "soft_pairs.jsonl", soft)
    write_jsonl(d / "rankings.jsonl", ranking_records(PROMPTS) + ranking_records(PROMPTS, shift=1))
    write_jsonl(d / "rankings_eval.jsonl", ranking_records(HELD_OUT_PROMPTS, shift=2))
    task = get_task("sentiment")
    write_jsonl(d / "sentiment_prompts.jsonl", [{"prompt": p} for p in task.prompts("train", 16, seed=0)])
    return d


def run_stage(kind: str, out: Path, **settings) -> dict:
    """Validate `settings` with the stage's config class and run it, as the runner does."""
    config_cls, run = stage_type(kind).load()
    return run(config_cls.model_validate(settings), out)


def train_lines(stage_dir: Path) -> list[dict]:
    """The per-step training lines of log.jsonl (eval lines carry `eval/` keys instead)."""
    lines = [json.loads(x) for x in (stage_dir / "log.jsonl").read_text().splitlines()]
    return [x for x in lines if "loss" in x]


def mean_loss(lines: list[dict]) -> float:
    return sum(x["loss"] for x in lines) / len(lines)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


@torch.no_grad()
def completion_logps(model_dir: str | Path, data: Path) -> torch.Tensor:
    """log π(completion | prompt) of every example in an SFT file under the saved model."""
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    rows, _ = tokenize_sft(load_sft(data), tokenizer, 64, 32)
    b = pad_rows(rows, tokenizer.pad_token_id)
    logps, mask = token_logps(model, b["input_ids"], b["attention_mask"], b["loss_mask"])
    return sequence_logps(logps, mask)


FAST = {"save_every": None, "warmup_ratio": 0.0, "schedule": "constant", "group_by_length": False}

# --- SFT --------------------------------------------------------------------------------------


def test_sft_learns_the_demonstrations(base_model, data_dir, tmp_path):
    out = tmp_path / "sft"
    metrics = run_stage("sft", out, model=base_model, data=str(data_dir / "demos.jsonl"), max_length=64,
                        max_prompt_length=32, train={**FAST, "lr": 1e-2, "batch_size": 8, "max_steps": 30})
    log = train_lines(out)
    assert [x["step"] for x in log] == list(range(1, 31))  # one line per step
    assert log[-1]["loss"] < 0.3 * log[0]["loss"]
    assert metrics["steps"] == 30 and (out / "done.json").exists()
    before = completion_logps(base_model, data_dir / "demos.jsonl")
    after = completion_logps(out / "model", data_dir / "demos.jsonl")
    assert bool((after > before + 5).all()), (before, after)  # every demonstration: e^5 times likelier


def test_lora_sft_trains_only_adapters_and_exports_a_plain_model(pretrained_model, data_dir, tmp_path):
    out = tmp_path / "lora"
    run_stage("sft", out, model=pretrained_model, data=str(data_dir / "demos.jsonl"), max_length=64, max_prompt_length=32,
              lora={"r": 4, "alpha": 8}, train={**FAST, "lr": 1e-2, "batch_size": 8, "max_steps": 30})
    log = train_lines(out)
    assert mean_loss(log[-5:]) < 0.85 * mean_loss(log[:5])

    # the export is a plain merged model: no adapter files, no LoRA tensors, same tensor names
    exported = out / "model"
    assert not (exported / "adapter_config.json").exists()
    before, after = weights(pretrained_model), weights(exported)
    assert set(after) == set(before) and not any("lora" in k for k in after)
    # LoRA ("all-linear": every linear layer but the head) moved the linear weights only;
    # embeddings, position embeddings and layer norms were frozen and are bit-identical
    frozen = [k for k in before if k.startswith(("transformer.wte", "transformer.wpe")) or ".ln_" in k]
    adapted = [k for k in before if k.endswith(("attn.c_attn.weight", "mlp.c_fc.weight"))]
    assert frozen and adapted
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    for k in adapted:
        assert not torch.equal(before[k], after[k]), k

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(exported)
    assert type(model).__name__ == "GPT2LMHeadModel"
    tok = AutoTokenizer.from_pretrained(exported)
    ids = tok("the film was", return_tensors="pt")
    out_ids = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out_ids.shape[1] > ids["input_ids"].shape[1]


def test_accumulation_in_a_real_stage_matches_the_large_batch(base_model, data_dir, tmp_path):
    # demos of different lengths, so the micro-batches pad differently and count different tokens
    data = tmp_path / "mixed.jsonl"
    write_jsonl(data, [{"prompt": p, "completion": c * (1 + i % 3)} for i, (p, c) in enumerate(DEMOS * 4)])
    # A large Adam eps makes each update proportional to the gradient (no clipping either), so a
    # mis-weighted micro-batch would show, while float noise on near-zero gradients is not blown
    # up to a whole learning-rate step as Adam's usual 1e-8 would do.
    ends = {}
    for micro in (8, 2):
        out = tmp_path / f"micro{micro}"
        run_stage("sft", out, model=base_model, data=str(data), max_length=64, max_prompt_length=32,
                  train={**FAST, "lr": 0.5, "adam_eps": 1.0, "max_grad_norm": None, "batch_size": 8,
                         "micro_batch_size": micro, "max_steps": 3})
        ends[micro] = weights(out / "model")
    diff = max((ends[8][k] - ends[2][k]).abs().max().item() for k in ends[8])
    assert diff <= 1e-5
    start = weights(base_model)
    assert max((ends[8][k] - start[k]).abs().max().item() for k in start) > 1e-4  # it did train


# --- reward model -----------------------------------------------------------------------------


def test_reward_model_learns_to_order_a_held_out_ranking(base_model, data_dir, tmp_path):
    out = tmp_path / "rm"
    metrics = run_stage("reward_model", out, model=base_model, data=str(data_dir / "rankings.jsonl"),
                        eval_data=str(data_dir / "rankings_eval.jsonl"), max_length=64, max_prompt_length=32,
                        train={**FAST, "lr": 3e-3, "batch_size": 12, "epochs": 6})
    # each 3-way ranking became 3 ordered pairs
    assert metrics["train_pairs"] == 3 * 2 * len(PROMPTS) and metrics["eval_pairs"] == 3 * len(HELD_OUT_PROMPTS)
    assert metrics["eval"]["accuracy"] == 1.0

    tokenizer = load_tokenizer(out / "model")
    rm = load_reward_model(out / "model").eval()
    for record in ranking_records(HELD_OUT_PROMPTS, shift=2):
        # scored as trained: <s> prompt response </s>
        texts = [tokenizer.bos_token + record["prompt"] + r + tokenizer.eos_token for r in record["responses"]]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            scores = reward_scores(rm, batch["input_ids"], batch["attention_mask"])
        assert sorted(range(3), key=lambda i: -scores[i].item()) == record["ranking"], scores


# --- DPO --------------------------------------------------------------------------------------


def dpo(base_model, data_dir, out: Path, steps: int = 12, lr: float = 5e-3, **settings) -> dict:
    """The DPO stage on the hand-written pairs; `settings` override the defaults below."""
    defaults = {"model": base_model, "data": str(data_dir / "pairs.jsonl"),
                "eval_data": str(data_dir / "pairs_eval.jsonl"), "max_length": 64, "max_prompt_length": 32,
                "beta": 0.1, "train": {**FAST, "lr": lr, "batch_size": 8, "max_steps": steps}}
    return run_stage("dpo", out, **{**defaults, **settings})


@pytest.fixture
def reference_calls(monkeypatch) -> list[int]:
    """Counts calls of the DPO stage's reference log-prob computation (one per dataset split)."""
    import alignlab.stages.offline.dpo as dpo_stage

    calls: list[int] = []
    real = dpo_stage._reference_logps

    def spy(ref, pairs, *args, **kwargs):
        calls.append(len(pairs))
        return real(ref, pairs, *args, **kwargs)

    monkeypatch.setattr(dpo_stage, "_reference_logps", spy)
    return calls


def test_dpo_precomputed_reference_is_cached_and_starts_at_ln2(base_model, data_dir, tmp_path, reference_calls):
    cache = tmp_path / "cache"
    first = dpo(base_model, data_dir, tmp_path / "a", cache_dir=str(cache))
    n_train, n_eval = first["train_pairs"], first["eval_pairs"]
    assert reference_calls == [n_train, n_eval]  # computed once, for train and held-out pairs
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns

    log = train_lines(tmp_path / "a")
    # the first logged loss is taken before the first update, when policy == reference: ln 2
    assert abs(log[0]["loss"] - LN2) < 1e-4
    assert abs(log[0]["reward_margin"]) < 1e-4
    assert log[-1]["reward_margin"] > 0.5 and log[-1]["accuracy"] == 1.0 and log[0]["accuracy"] < 1.0
    assert log[-1]["loss"] < 0.5 * LN2
    assert first["eval"]["accuracy"] == 1.0 and first["eval"]["reward_margin"] > 0

    # the same settings again, elsewhere: the cache is read, nothing recomputed or rewritten
    second = dpo(base_model, data_dir, tmp_path / "b", cache_dir=str(cache))
    assert reference_calls == [n_train, n_eval]
    assert [f.stat().st_mtime_ns for f in cache.glob("*.safetensors")] == [stamp]
    assert train_lines(tmp_path / "b")[-1]["loss"] == pytest.approx(log[-1]["loss"], abs=1e-6)
    assert second["eval"] == pytest.approx(first["eval"], abs=1e-6)

    # a setting the reference log-probs depend on makes a new cache entry
    dpo(base_model, data_dir, tmp_path / "c", steps=1, cache_dir=str(cache), max_length=40)
    assert len(reference_calls) == 4 and len(list(cache.glob("*.safetensors"))) == 2


def test_dpo_live_reference_gives_the_same_first_loss(base_model, data_dir, tmp_path, reference_calls):
    dpo(base_model, data_dir, tmp_path / "pre", steps=3)
    dpo(base_model, data_dir, tmp_path / "live", steps=3, ref_mode="live")
    assert not (tmp_path / "live" / "cache").exists()
    pre, live = train_lines(tmp_path / "pre"), train_lines(tmp_path / "live")
    assert abs(live[0]["loss"] - LN2) < 1e-4
    for a, b in zip(pre, live):  # the same run, whichever way the reference is computed
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_dpo_lora_with_adapter_disabled_reference(pretrained_model, data_dir, tmp_path, monkeypatch):
    from alignlab.models import FrozenCopy

    def no_second_copy(*args, **kwargs):
        raise AssertionError("a LoRA policy's reference is the policy with its adapter off, not a copy")

    monkeypatch.setattr(FrozenCopy, "from_pretrained", no_second_copy)
    out = tmp_path / "lora"
    metrics = dpo(pretrained_model, data_dir, out, lr=1e-2, ref_mode="live", lora={"r": 4, "alpha": 8})
    log = train_lines(out)
    assert abs(log[0]["loss"] - LN2) < 1e-4  # fresh adapters: the policy is its own reference
    assert log[-1]["reward_margin"] > log[0]["reward_margin"] + 0.2
    assert metrics["eval"]["reward_margin"] > 0
    assert not any("lora" in k for k in weights(out / "model"))


@pytest.mark.parametrize("variant", ["label_smoothing", "soft_labels"])
def test_dpo_conservative_and_soft_labels(base_model, data_dir, tmp_path, variant):
    extra = {"label_smoothing": 0.1} if variant == "label_smoothing" else {"data": str(data_dir / "soft_pairs.jsonl")}
    out = tmp_path / variant
    metrics = dpo(base_model, data_dir, out, steps=8, **extra)
    log = train_lines(out)
    # at Δ = 0 every label gives −[p·log σ(0) + (1−p)·log σ(0)] = ln 2
    assert abs(log[0]["loss"] - LN2) < 1e-4
    assert all(math.isfinite(x["loss"]) for x in log)
    assert log[-1]["reward_margin"] > 0.2 and log[-1]["loss"] < log[0]["loss"]
    assert math.isfinite(metrics["eval"]["loss"])


# --- sampling pairs, evaluating ---------------------------------------------------------------


def _sample_pairs(base_model, data_dir, out, eval_fraction):
    """Run sample_pairs (16 prompts, 4 samples each); return its metrics and the loaded splits."""
    metrics = run_stage("sample_pairs", out, model=base_model, prompts=str(data_dir / "sentiment_prompts.jsonl"),
                        task="sentiment", samples_per_prompt=4, eval_fraction=eval_fraction, seed=3,
                        sampling={"max_new_tokens": 12, "batch_size": 64})
    train = load_preferences(out / "data" / "train.jsonl")
    test = load_preferences(out / "data" / "test.jsonl")
    assert len(train) == metrics["train_pairs"] > 0 and len(test) == metrics["test_pairs"] > 0
    assert {e.prompt for e in train}.isdisjoint({e.prompt for e in test})
    return metrics, train, test


def test_sample_pairs_writes_loadable_disjoint_splits(base_model, data_dir, tmp_path):
    out = tmp_path / "pairs"
    metrics, _, _ = _sample_pairs(base_model, data_dir, out, eval_fraction=0.25)
    assert metrics["samples"] == 16 * 4
    assert metrics["train_pairs"] + metrics["test_pairs"] + metrics["dropped_pairs"] == 16 * 6
    raw = [json.loads(x) for x in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert all(r["chosen_gold"] > r["rejected_gold"] for r in raw)  # labelled by the gold reward
    gold = get_task("sentiment").gold_reward([r["prompt"] for r in raw], [r["chosen"] for r in raw])
    assert gold == pytest.approx([r["chosen_gold"] for r in raw])


def test_sample_pairs_holds_out_a_prompt_when_the_drawn_ones_give_no_pair(base_model, data_dir, tmp_path):
    # 16 prompts x 0.01 rounds to no held-out prompt: one training prompt moves over whole
    _, _, test = _sample_pairs(base_model, data_dir, tmp_path / "pairs", eval_fraction=0.01)
    assert len({e.prompt for e in test}) == 1


def test_sample_pairs_with_no_pair_past_min_gap_is_a_clear_error(base_model, data_dir, tmp_path):
    with pytest.raises(ValueError, match="min_gap=5.0"):  # gold rewards lie in [-1, 1]
        run_stage("sample_pairs", tmp_path / "pairs", model=base_model, prompts=str(data_dir / "sentiment_prompts.jsonl"),
                  task="sentiment", samples_per_prompt=2, min_gap=5.0, sampling={"max_new_tokens": 8})


def test_hold_out_one_prompt_moves_a_whole_prompt_and_keeps_a_lone_one():
    import random

    from alignlab.stages.data.sample_pairs import hold_out_one_prompt

    rows = [{"prompt": p, "chosen": f"{p}{i}", "rejected": "r"} for p in "aab" for i in range(2)]
    splits = {"train": list(rows), "test": []}
    hold_out_one_prompt(splits, random.Random(0))
    held = {r["prompt"] for r in splits["test"]}
    assert len(held) == 1 and held.isdisjoint(r["prompt"] for r in splits["train"])
    assert sorted(map(str, splits["train"] + splits["test"])) == sorted(map(str, rows))  # nothing lost
    lone = {"train": rows[:2], "test": []}
    hold_out_one_prompt(lone, random.Random(0))
    assert lone == {"train": rows[:2], "test": []}


def test_evaluate_kl_to_itself_is_zero(base_model, data_dir, tmp_path):
    out = tmp_path / "eval"
    metrics = run_stage("evaluate", out, models={"a": base_model}, reference=base_model, task="sentiment",
                        prompts=str(data_dir / "sentiment_prompts.jsonl"), n_prompts=8, samples_per_prompt=2,
                        sampling={"max_new_tokens": 10})
    figures = metrics["models"]["a"]
    assert abs(figures["kl_mean"]) < 1e-5
    assert 0 <= figures["distinct_1"] <= 1 and 0 <= figures["distinct_2"] <= 1
    assert figures["distinct_1"] > 0 and figures["samples"] == 16
    assert -1 <= figures["gold_mean"] <= 1
    samples = [json.loads(x) for x in (out / "data" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and {s["model"] for s in samples} == {"a"}
    assert all(abs(s["kl"]) < 1e-4 and set(s) >= {"prompt", "completion", "gold", "length"} for s in samples)
    assert json.loads((out / "metrics.json").read_text())["models"]["a"]["samples"] == 16


# --- the stage command line -------------------------------------------------------------------


def test_stage_command_help_lists_the_settings():
    from alignlab.cli import app

    result = CliRunner().invoke(app, ["sft", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for setting in ("--model", "--data", "--max_length", "--lora", "--train", "--out", "--config"):
        assert setting in result.output, setting


def test_stage_command_rejects_an_unknown_setting(tmp_path, base_model, data_dir):
    from alignlab.cli import app

    result = CliRunner().invoke(app, ["dpo", "--out", str(tmp_path / "o"), "--model", base_model,
                                      "--data", str(data_dir / "pairs.jsonl"), "--betaa", "1"])
    assert result.exit_code == 1
    assert "unknown key 'betaa'" in result.output
    assert not (tmp_path / "o").exists()  # nothing was started
