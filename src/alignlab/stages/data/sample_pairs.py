"""Preference pairs from the policy itself: k samples per prompt, labelled by a gold reward.

As in the DPO paper's sentiment experiment: every pair among the k samples of a prompt becomes a
preference pair, the one with the higher gold reward as `chosen`. Optional Bradley–Terry noise
draws the label with P(a ≻ b) = σ((g_a − g_b) / τ), as noisy human labels would be. The split into
train/test is by prompt, so held-out pairs come from prompts the models never trained on.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Literal

from pydantic import Field

from alignlab.data.formats import load_prompts
from alignlab.data.readers import write_jsonl
from alignlab.data.tokenize import tokenize_prompts
from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.rollout import SamplingSettings, generate
from alignlab.stages.blocks import EvalFractionSettings, ModelSettings, PromptLengthSettings, SeedSettings
from alignlab.stages.common import finish, runtime, seed_everything
from alignlab.tasks import TaskSpec, get_task


class SamplePairsConfig(ModelSettings, PromptLengthSettings, SeedSettings, EvalFractionSettings):
    prompts: str
    task: TaskSpec = Field(description="built-in task whose gold reward labels the pairs")
    samples_per_prompt: int = Field(2, ge=2)
    sampling: SamplingSettings = SamplingSettings()
    label_noise: Literal["none", "bradley_terry"] = "none"
    noise_temperature: float = Field(0.1, gt=0)
    min_gap: float = Field(0.0, ge=0, description="drop pairs whose gold rewards differ by no more")


def run(cfg: SamplePairsConfig, out: Path) -> dict:
    prompts = load_prompts(cfg.prompts)
    tokenizer = load_tokenizer(cfg.model)
    prompt_ids = tokenize_prompts(prompts, tokenizer, cfg.max_prompt_length)
    device, _ = runtime("auto")
    seed_everything(cfg.seed)
    model = load_causal_lm(cfg.model, device=device)
    k = cfg.samples_per_prompt
    completions_ids = generate(
        model, [ids for ids in prompt_ids for _ in range(k)], cfg.sampling,
        pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, seed=cfg.seed,
    )
    texts = tokenizer.batch_decode(completions_ids, skip_special_tokens=True)
    task = get_task(cfg.task)
    prompt_texts = [p.prompt for p in prompts for _ in range(k)]
    gold = task.gold_reward(prompt_texts, texts)

    rng = random.Random(cfg.seed)
    test_prompts = set(rng.sample(range(len(prompts)), round(cfg.eval_fraction * len(prompts))))
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    dropped = agree = 0
    for p, prompt in enumerate(prompts):
        for a, b in itertools.combinations(range(p * k, (p + 1) * k), 2):
            gap = gold[a] - gold[b]
            if abs(gap) <= cfg.min_gap or texts[a] == texts[b] or not (texts[a].strip() and texts[b].strip()):
                dropped += 1
                continue
            a_wins = gap > 0
            if cfg.label_noise == "bradley_terry":
                a_wins = rng.random() < 1 / (1 + math.exp(-gap / cfg.noise_temperature))
            agree += a_wins == (gap > 0)
            win, lose = (a, b) if a_wins else (b, a)
            splits["test" if p in test_prompts else "train"].append(
                {"prompt": prompt.prompt, "chosen": texts[win], "rejected": texts[lose],
                 "chosen_gold": gold[win], "rejected_gold": gold[lose]}
            )
    if not splits["train"]:
        raise ValueError(f"{cfg.model}: none of the {dropped} sampled pairs differ in gold reward by more than "
                         f"min_gap={cfg.min_gap} with two distinct, non-empty responses; lower min_gap or raise "
                         "samples_per_prompt or the sampling temperature")
    if cfg.eval_fraction > 0 and not splits["test"]:
        hold_out_one_prompt(splits, rng)
    for split, rows in splits.items():
        write_jsonl(out / "data" / f"{split}.jsonl", rows)
    kept = len(splits["train"]) + len(splits["test"])
    return finish(out, cfg, {
        "prompts": len(prompts), "samples": len(texts), "train_pairs": len(splits["train"]),
        "test_pairs": len(splits["test"]), "dropped_pairs": dropped,
        "label_agreement_with_gold": agree / max(kept, 1),
        "gold_mean": sum(gold) / len(gold),
        "mean_response_tokens": sum(map(len, completions_ids)) / len(completions_ids),
    })


def hold_out_one_prompt(splits: dict[str, list[dict]], rng: random.Random) -> None:
    """Move the pairs of one seeded-chosen training prompt to the empty test split.

    The held-out prompts are drawn before labelling, so with few prompts or a large min_gap all of
    them can lose every pair, and the next stage would find an empty test file. Nothing moves when
    the training pairs come from a single prompt: that one must stay for training.
    """
    prompts = list(dict.fromkeys(row["prompt"] for row in splits["train"]))
    if len(prompts) < 2:
        return
    held = rng.choice(prompts)
    splits["test"] = [row for row in splits["train"] if row["prompt"] == held]
    splits["train"] = [row for row in splits["train"] if row["prompt"] != held]
