"""What every sampling backend returns, and how that becomes a training batch.

The sampler's log-probability of a token (the one definition every backend follows):

    logp(y_t) = log_softmax(logits_t / temperature)[y_t]

the log-prob under the model's *tempered* distribution, WITHOUT top-k / top-p truncation, at the
token that was sampled. That is exactly what `alignlab.ops.token_logps(..., temperature=T)`
computes in a training forward over the same sequence, so

- PPO-style objectives can take their "old" log-probs straight from the sampler, and
- the sampler-vs-trainer mismatch (different kernels, KV cache, bf16 engines such as vLLM) is
  measurable with `logp_mismatch`: the two should agree up to numerical noise.

Top-k / top-p change which tokens can be drawn, not the log-prob reported for the drawn one; a
loss that needs the log-prob of the truncated distribution must renormalise itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from alignlab.ops.stats import masked_mean


@dataclass
class Rollouts:
    """One completion per prompt, with the sampler's log-prob of every completion token.

    completion_ids holds the sampled ids up to and including EOS when one was produced (never
    padding); logps[i] has one float per completion_ids[i] entry; finished[i] says whether row i
    ended with EOS (False: it hit max_new_tokens first).
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logps: list[list[float]]
    finished: list[bool]

    def __post_init__(self) -> None:
        rows = {len(self.prompt_ids), len(self.completion_ids), len(self.logps), len(self.finished)}
        if len(rows) != 1:
            raise ValueError(
                f"Rollouts fields disagree on the number of rows: prompt_ids {len(self.prompt_ids)}, "
                f"completion_ids {len(self.completion_ids)}, logps {len(self.logps)}, "
                f"finished {len(self.finished)}"
            )
        for i, (ids, lps) in enumerate(zip(self.completion_ids, self.logps)):
            if len(ids) != len(lps):
                raise ValueError(f"row {i}: {len(ids)} completion ids but {len(lps)} log-probs")

    def __len__(self) -> int:
        return len(self.prompt_ids)


@runtime_checkable
class Sampler(Protocol):
    """A generation backend: one completion per prompt (repeat a prompt to get several).

    `settings` is an `alignlab.rollout.SamplingSettings`. The same seed must give the same
    samples, and sampling must not advance the caller's global random state.
    """

    def sample(self, prompts: list[list[int]], settings, seed: int = 0) -> Rollouts: ...


def to_batch(rollouts: Rollouts, pad_id: int) -> dict[str, Tensor]:
    """Right-padded training tensors for `rollouts` (prompt + completion per row).

    Returns input_ids, attention_mask and loss_mask, all `[B, T]` (loss_mask is 1 on completion
    tokens); sampler_logps `[B, T-1]` in `alignlab.ops.token_logps`'s convention (position t
    holds the log-prob of input_ids[:, t+1], 0 where loss_mask[:, 1:] is 0), so it lines up with
    the trainer's log-probs of the same batch entry for entry; and finished `[B]` (bool).
    """
    lengths = [len(p) + len(c) for p, c in zip(rollouts.prompt_ids, rollouts.completion_ids)]
    batch, width = len(lengths), max(lengths, default=0)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    loss_mask = torch.zeros((batch, width), dtype=torch.long)
    sampler_logps = torch.zeros((batch, max(width - 1, 0)), dtype=torch.float32)
    for row, (prompt, completion, logps) in enumerate(
        zip(rollouts.prompt_ids, rollouts.completion_ids, rollouts.logps)
    ):
        start, end = len(prompt), len(prompt) + len(completion)
        input_ids[row, :end] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[row, :end] = 1
        loss_mask[row, start:end] = 1
        # Completion token j sits at position start + j and is predicted at position start + j - 1.
        # A completion with an empty prompt has no prediction for its first token; it stays 0.
        first = max(start, 1)
        sampler_logps[row, first - 1 : end - 1] = torch.tensor(logps[first - start :], dtype=torch.float32)
        if start == 0:
            loss_mask[row, 0] = 0  # nothing predicts position 0, so it cannot carry a loss
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
        "sampler_logps": sampler_logps,
        "finished": torch.tensor(rollouts.finished, dtype=torch.bool),
    }


def logp_mismatch(sampler_logps: Tensor, trainer_logps: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the sampler's log-probs are from the trainer's on the same tokens.

    Both `[B, T-1]` in token_logps's convention, mask the response mask (token_logps's second
    output). Returns mean |trainer - sampler|, its max, and the mean importance ratio
    exp(trainer - sampler) over masked tokens: near 1.0 (and a small mean |diff|) is healthy; a
    drift means the "old" log-probs a PPO-style loss uses are not the policy it thinks it sampled.
    """
    diff = (trainer_logps.detach().float() - sampler_logps.detach().float().to(trainer_logps.device))
    keep = (mask if mask.dtype == torch.bool else mask != 0).to(diff.device)
    abs_diff = diff.abs()
    return {
        "mean_abs_diff": masked_mean(abs_diff, keep).item(),
        "max_abs_diff": abs_diff[keep].max().item() if keep.any() else 0.0,
        "mean_ratio": masked_mean(diff.exp(), keep).item(),
    }
