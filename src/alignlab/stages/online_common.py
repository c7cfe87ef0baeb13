"""What the online stages (PPO, RLOO, GRPO, online DPO) share: prompts per iteration, sampling
and scoring with faulty samples dropped, and no-grad log-prob passes over an experience batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from alignlab.data.formats import load_prompts
from alignlab.data.tokenize import tokenize_prompts
from alignlab.feedback import RewardSpec, ScoringBatch, score_safely
from alignlab.rollout import Rollouts, SamplingSettings, logp_mismatch, sample, to_batch
from alignlab.stages.common import StageConfig
from alignlab.train.online import OnlineSettings


class OnlineConfig(StageConfig):
    """Settings every online stage has."""

    model: str
    prompts: str
    reward: RewardSpec
    ref_model: str | None = Field(None, description="the KL anchor; default: the starting model")
    dtype: str = "float32"
    max_prompt_length: int = 128
    sampling: SamplingSettings = SamplingSettings()
    on_reward_error: Literal["drop", "stop"] = Field("drop", description="a sample whose reward fails or is NaN")
    train: OnlineSettings = OnlineSettings()


class PromptStream:
    """Prompts for each iteration: seeded shuffles of the whole set, one after another."""

    def __init__(self, n: int, per_iteration: int, seed: int):
        if n == 0:
            raise ValueError("no prompts to sample from")
        self.n, self.per_iteration, self.seed = n, per_iteration, seed

    def indices(self, iteration: int) -> list[int]:
        out: list[int] = []
        position = iteration * self.per_iteration
        while len(out) < self.per_iteration:
            epoch, offset = divmod(position, self.n)
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)).tolist()
            take = order[offset : offset + self.per_iteration - len(out)]
            out += take
            position += len(take)
        return out


def load_prompt_ids(path: str, tokenizer, max_prompt_length: int) -> tuple[list[str], list[list[int]]]:
    prompts = load_prompts(path)
    return [p.prompt for p in prompts], tokenize_prompts(prompts, tokenizer, max_prompt_length)


@dataclass
class ScoredRollouts:
    rollouts: Rollouts
    prompts: list[str]
    completions: list[str]
    scores: Tensor
    figures: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def sample_and_score(
    policy, tokenizer, prompt_texts: list[str], prompt_ids: list[list[int]], k: int,
    sampling: SamplingSettings, reward, on_error: str, seed: int,
) -> ScoredRollouts:
    """k samples per prompt, scored; samples whose reward failed are dropped — with their whole
    group when k > 1, because the group's baseline needs every member."""
    repeated = [ids for ids in prompt_ids for _ in range(k)]
    texts_in = [t for t in prompt_texts for _ in range(k)]
    rollouts = sample(policy, repeated, sampling, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, seed=seed)
    completions = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
    result = score_safely(reward, ScoringBatch(texts_in, completions, rollouts.prompt_ids, rollouts.completion_ids,
                                               rollouts.finished), on_error=on_error)
    valid = result.valid.view(-1, k).all(dim=1).repeat_interleave(k) if k > 1 else result.valid
    keep = valid.nonzero().flatten().tolist()
    figures = {f"reward/{name}": _mean(values, valid) for name, values in result.terms.items()}
    figures.update({"dropped_samples": float(len(valid) - len(keep)),
                    "response_tokens": sum(map(len, rollouts.completion_ids)) / max(len(repeated), 1),
                    "eos_rate": sum(rollouts.finished) / max(len(repeated), 1)})
    kept = Rollouts(*[[getattr(rollouts, f)[i] for i in keep] for f in ("prompt_ids", "completion_ids", "logps", "finished")])
    return ScoredRollouts(kept, [texts_in[i] for i in keep], [completions[i] for i in keep], result.scores[keep],
                          figures, result.problems)


def _mean(values: list[float], valid: Tensor) -> float:
    kept = [v for v, ok in zip(values, valid.tolist()) if ok]
    return sum(kept) / len(kept) if kept else float("nan")


@torch.no_grad()
def batched_logps(fn, batch: dict[str, Tensor], device, micro: int) -> Tensor:
    """Run `fn(micro_batch) -> [b, T-1]` over `batch` in micro-batches, gathered on the CPU."""
    n = batch["input_ids"].shape[0]
    parts = []
    for start in range(0, n, micro):
        part = {k: v[start : start + micro].to(device) for k, v in batch.items() if v.dim() >= 1}
        parts.append(fn(part).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, batch["input_ids"].shape[1] - 1)


def rollout_batch(scored: ScoredRollouts, pad_id: int) -> dict[str, Tensor]:
    """Right-padded ids, masks and the sampler's log-probs of the kept samples (on the CPU)."""
    return to_batch(scored.rollouts, pad_id)


def mismatch_figures(sampler_logps: Tensor, trainer_logps: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the sampler's log-probs are from the trainer's on the same tokens (≈0 / ratio ≈1 is healthy)."""
    return {f"sampler/{k}": float(v) for k, v in logp_mismatch(sampler_logps, trainer_logps, mask).items()}
