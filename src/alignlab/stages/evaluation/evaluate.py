"""Evaluate what alignment did: sample each model on held-out prompts and measure the samples.

For every model, on the same prompts with the same sampling settings and seed: the task's gold
reward, a reward model's proxy reward (when given), the mean sequence KL to a reference measured
on the model's own samples (Σ_t log π(y_t|·) − log π_ref(y_t|·), the quantity the DPO paper's
frontier plots), response length, and distinct-n. Samples are written to `data/samples.jsonl`.

With `guard:` every model samples behind constitutional classifiers, and every figure is of what a
user gets: a refused prompt's or a stopped answer's text is the guard's message (scored by the
gold and proxy rewards as such), its tokens those shown before the stop (none when refused), so
the KL and the length count only those. `guard_blocked_rate` and `guard_halted_rate` say how
often each classifier stepped in; each sample records `guarded_by` (input, output or null).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from pydantic import Field

from alignlab.data.collate import pad_rows
from alignlab.data.formats import load_prompts
from alignlab.data.readers import write_jsonl
from alignlab.data.tokenize import TokenizedRow, tokenize_prompts
from alignlab.eval.metrics import distinct_n, mean_and_se
from alignlab.guard.sampler import shown_samples
from alignlab.models import (
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    reward_scores,
)
from alignlab.ops import sequence_logps, token_logps
from alignlab.rollout import SamplingSettings
from alignlab.stages.blocks import EvaluationSeedSettings, GuardedSamplingSettings, PromptLengthSettings
from alignlab.stages.common import finish, runtime, seed_everything
from alignlab.tasks import TaskSpec, get_task


class EvaluateConfig(PromptLengthSettings, EvaluationSeedSettings, GuardedSamplingSettings):
    models: dict[str, str] = Field(description="name -> model path, e.g. {sft: '@sft', dpo: '@dpo'}")
    snapshots: dict[str, str] = Field(
        default_factory=dict,
        description="name -> a directory of policy snapshots (e.g. '@ppo/snapshots'); each is evaluated as name@<subdir>",
    )
    prompts: str
    reference: str | None = Field(None, description="model the KL is measured against")
    task: TaskSpec | None = Field(None, description="built-in task giving the gold reward")
    reward_model: str | None = Field(None, description="reward model giving the proxy reward")
    n_prompts: int | None = Field(None, gt=0)
    samples_per_prompt: int = Field(1, gt=0)
    sampling: SamplingSettings = SamplingSettings()
    batch_size: int = 64


@torch.no_grad()
def _sequence_logps(model, rows: list[TokenizedRow], pad: int, batch_size: int, temperature: float = 1.0) -> list[float]:
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        b = {k: v.to(device) for k, v in pad_rows(rows[start : start + batch_size], pad).items()}
        logps, mask = token_logps(model, b["input_ids"], b["attention_mask"], b["loss_mask"], temperature=temperature)
        out += sequence_logps(logps, mask).tolist()
    return out


@torch.no_grad()
def _proxy_rewards(rm, rows: list[TokenizedRow], pad: int, batch_size: int) -> list[float]:
    device = next(rm.parameters()).device
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        b = pad_rows(rows[start : start + batch_size], pad)
        out += reward_scores(rm, b["input_ids"].to(device), b["attention_mask"].to(device)).float().tolist()
    return out


def all_models(cfg: EvaluateConfig) -> dict[str, str]:
    """The named models plus every snapshot found under the snapshot directories, in order."""
    models = dict(cfg.models)
    for name, root in cfg.snapshots.items():
        found = sorted(p for p in Path(root).iterdir() if (p / "config.json").exists()) if Path(root).is_dir() else []
        if not found:
            raise ValueError(f"snapshots {name!r}: no saved models under {root}")
        models.update({f"{name}@{p.name}": str(p) for p in found})
    return models


def run(cfg: EvaluateConfig, out: Path) -> dict:
    prompts = load_prompts(cfg.prompts)[: cfg.n_prompts]
    models = all_models(cfg)
    first = next(iter(models.values()))
    tokenizer = load_tokenizer(first)
    prompt_ids = tokenize_prompts(prompts, tokenizer, cfg.max_prompt_length)
    device, _ = runtime("auto")
    pad = tokenizer.pad_token_id
    k = cfg.samples_per_prompt
    repeated = [ids for ids in prompt_ids for _ in range(k)]
    prompt_texts = [p.prompt for p in prompts for _ in range(k)]
    task = get_task(cfg.task) if cfg.task else None
    reference = load_causal_lm(cfg.reference, device=device) if cfg.reference else None
    rm = load_reward_model(cfg.reward_model, device=device) if cfg.reward_model else None
    guard = cfg.guard.build(tokenizer, device) if cfg.guard else None

    results, samples = {}, []
    for name, path in models.items():
        seed_everything(cfg.seed)
        model = load_causal_lm(path, device=device)
        completions, texts, verdicts = shown_samples(model, repeated, cfg.sampling, guard, tokenizer, seed=cfg.seed)
        rows = [TokenizedRow(p + c, [0] * len(p) + [1] * len(c)) for p, c in zip(repeated, completions)]
        figures: dict[str, float] = {"samples": len(texts)}
        if guard is not None:
            figures["guard_blocked_rate"] = verdicts.count("input") / len(verdicts)
            figures["guard_halted_rate"] = verdicts.count("output") / len(verdicts)
        per_sample: dict[str, list[float]] = {"length": [float(len(c)) for c in completions]}
        if task is not None:
            per_sample["gold"] = task.gold_reward(prompt_texts, texts)
        if rm is not None:
            per_sample["proxy"] = _proxy_rewards(rm, rows, pad, cfg.batch_size)
        if reference is not None:
            mine = _sequence_logps(model, rows, pad, cfg.batch_size, cfg.sampling.temperature)
            ref = _sequence_logps(reference, rows, pad, cfg.batch_size)
            per_sample["kl"] = [a - b for a, b in zip(mine, ref)]
        for key, values in per_sample.items():
            figures[f"{key}_mean"], figures[f"{key}_se"] = mean_and_se(values)
        figures["gold_std"] = statistics.pstdev(per_sample["gold"]) if "gold" in per_sample else float("nan")
        figures["distinct_1"] = distinct_n(texts, 1)
        figures["distinct_2"] = distinct_n(texts, 2)
        results[name] = figures
        for i, text in enumerate(texts):
            samples.append({"model": name, "prompt": prompt_texts[i], "completion": text,
                            **{key: values[i] for key, values in per_sample.items()},
                            **({"guarded_by": verdicts[i]} if guard is not None else {})})
        del model
    write_jsonl(out / "data" / "samples.jsonl", samples)
    return finish(out, cfg, {"models": results, "model_paths": models, "prompts": len(prompts),
                             "samples_per_prompt": k, **({"guard": cfg.guard.model_dump()} if cfg.guard else {})})
