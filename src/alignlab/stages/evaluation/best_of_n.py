"""Best-of-N: the policy that samples N completions and keeps the one a proxy reward likes best.

It needs no training, which makes it the reference point of the reward–KL frontier: its KL to
the sampling policy is known in closed form, KL(best-of-N ‖ π) = log N − (N−1)/N (Stiennon et al.
2020, appendix G.3). Beirami et al. (2024) show that this is exact only when no two samples tie
and an upper bound otherwise, so on a small model with repeated samples the true KL is lower.
"π" here is the sampling policy as configured (temperature, top-k/top-p included).

The stage samples max(n) completions per prompt once, scores each with the proxy (`reward`,
usually a reward model) and, when given, with `gold` (the true score, e.g. a task's gold
reward), and for every N in `n` picks per prompt the best of the *first* N samples by proxy.
Because the candidate sets are nested, each prompt's picked proxy score can only grow with N,
so the mean proxy is non-decreasing in N whenever every N uses the same prompts (no prompt is
skipped). A sample whose proxy score failed or is NaN never wins; a prompt whose first N samples
all failed is skipped for that N and counted.

Writes `metrics.json` with one point per N (gold/proxy/length means, the KL bound) and
`data/samples.jsonl`: one record per prompt with all its samples, their scores and the index
picked for each N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from alignlab.data.readers import write_jsonl
from alignlab.eval.metrics import finite_or_none, mean_and_se
from alignlab.feedback.rewards import (
    RewardSpec,
    ScoringBatch,
    build_reward,
    describe_reward,
    score_safely,
)
from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.rollout import SamplingSettings, sample
from alignlab.search.select import pick_best
from alignlab.stages.blocks import DtypeSettings, EvaluationSeedSettings, ModelSettings, PromptLengthSettings
from alignlab.stages.common import finish, runtime, seed_everything
from alignlab.stages.online.common import load_prompt_ids

MAX_PROBLEMS_REPORTED = 20


class BestOfNConfig(ModelSettings, DtypeSettings, PromptLengthSettings, EvaluationSeedSettings):
    prompts: str
    reward: RewardSpec = Field(description="the proxy that picks the best sample (usually a reward model)")
    gold: RewardSpec | None = Field(
        None, description="the true score reported for the picked samples, e.g. {type: gold, task: sentiment}; "
        "absent: only the proxy is reported",
    )
    n: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16], min_length=1, description="the N values to report")
    n_prompts: int | None = Field(None, gt=0, description="use the first n_prompts prompts only")
    sampling: SamplingSettings = SamplingSettings()
    on_reward_error: Literal["drop", "stop"] = Field("drop", description="a sample whose score fails or is NaN")

    @field_validator("n")
    @classmethod
    def _positive_and_distinct(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError(f"every N must be at least 1, got {values}")
        if len(set(values)) != len(values):
            raise ValueError(f"N values must be distinct, got {values}")
        return sorted(values)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ π) = log n − (n−1)/n in nats: exact without ties, an upper bound with them."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return math.log(n) - (n - 1) / n


def _per_prompt(values: Sequence, k: int) -> list[list]:
    return [list(values[start : start + k]) for start in range(0, len(values), k)]


def _point(n: int, picks: list[int | None], proxy: list[list[float]], gold: list[list[float]] | None,
           lengths: list[list[int]]) -> dict:
    """The figures of best-of-n over the prompts that have a pick."""
    chosen = [(p, i) for p, i in enumerate(picks) if i is not None]
    point = {"n": n, "kl_bound": best_of_n_kl(n), "prompts": len(chosen), "skipped_prompts": len(picks) - len(chosen)}
    point["proxy_mean"], point["proxy_se"] = mean_and_se([proxy[p][i] for p, i in chosen])
    point["length_mean"] = mean_and_se([float(lengths[p][i]) for p, i in chosen])[0]
    if gold is None:
        point["gold_mean"] = point["gold_se"] = float("nan")
    else:
        # a picked sample whose gold score failed cannot be counted; say how many
        golds = [gold[p][i] for p, i in chosen if math.isfinite(gold[p][i])]
        point["gold_mean"], point["gold_se"] = mean_and_se(golds)
        point["gold_missing"] = len(chosen) - len(golds)
    return point


def run(cfg: BestOfNConfig, out: Path) -> dict:
    tokenizer = load_tokenizer(cfg.model)
    prompt_texts, prompt_ids = load_prompt_ids(cfg.prompts, tokenizer, cfg.max_prompt_length)
    prompt_texts, prompt_ids = prompt_texts[: cfg.n_prompts], prompt_ids[: cfg.n_prompts]
    device, _ = runtime("auto")
    seed_everything(cfg.seed)
    proxy_source = build_reward(cfg.reward, tokenizer, device)
    gold_source = build_reward(cfg.gold, tokenizer, device) if cfg.gold is not None else None
    model = load_causal_lm(cfg.model, dtype=cfg.dtype, device=device)

    k = max(cfg.n)
    # Sample i of a prompt is row p*k + i: the first N samples of every prompt are its first N rows.
    rollouts = sample(model, [ids for ids in prompt_ids for _ in range(k)], cfg.sampling,
                      pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, seed=cfg.seed)
    del model
    completions = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
    batch = ScoringBatch([t for t in prompt_texts for _ in range(k)], completions, rollouts.prompt_ids,
                         rollouts.completion_ids, rollouts.finished)
    proxy_result = score_safely(proxy_source, batch, on_error=cfg.on_reward_error)
    gold_result = score_safely(gold_source, batch, on_error=cfg.on_reward_error) if gold_source else None

    proxy = _per_prompt(proxy_result.scores.tolist(), k)
    gold = _per_prompt(gold_result.scores.tolist(), k) if gold_result else None
    lengths = _per_prompt([len(c) for c in rollouts.completion_ids], k)
    texts = _per_prompt(completions, k)
    picks = {n: pick_best(proxy, n) for n in cfg.n}
    points = [_point(n, picks[n], proxy, gold, lengths) for n in cfg.n]

    records = []
    for p, prompt in enumerate(prompt_texts):
        samples = [{"completion": texts[p][i], "proxy": finite_or_none(proxy[p][i]), "length": lengths[p][i],
                    **({"gold": finite_or_none(gold[p][i])} if gold else {})} for i in range(k)]
        records.append({"prompt": prompt, "samples": samples, "best": {str(n): picks[n][p] for n in cfg.n}})
    write_jsonl(out / "data" / "samples.jsonl", records)

    problems = proxy_result.problems + (gold_result.problems if gold_result else [])
    return finish(out, cfg, {
        "points": points,
        "prompts": len(prompt_ids),
        "samples_per_prompt": k,
        "proxy": describe_reward(proxy_source),
        "gold": describe_reward(gold_source) if gold_source else None,
        "invalid_proxy_samples": proxy_result.num_invalid,
        "invalid_gold_samples": gold_result.num_invalid if gold_result else 0,
        "eos_rate": sum(rollouts.finished) / max(len(rollouts), 1),
        "problems": problems[:MAX_PROBLEMS_REPORTED],
    })
