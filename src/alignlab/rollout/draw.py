"""Drawing the next token by inverse CDF inside `model.generate`.

`torch.multinomial`, which `generate` samples with, costs 2.5–3 ms per call on a [64, 1841]
probability matrix on a CPU (it draws one exponential per vocabulary entry); over 32 new tokens
that was 7% of a GRPO step in bench/rl.py. Inverse-CDF sampling draws from the same distribution
with one uniform number per row: cumulative probabilities, then a binary search. It is a logits
processor that does temperature, top-k and top-p itself, draws, and leaves only the drawn token
finite, so `generate` run greedily returns the draw; `output_logits` still returns the raw
logits, so the sampler's log-probs are computed exactly as for multinomial sampling. The random
stream differs from multinomial's, so the same seed gives other (equally distributed) samples.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import LogitsProcessor


class InverseCDFDraw(LogitsProcessor):
    """Temperature, then top-k (0: off) and top-p (1.0: off), then one draw per row."""

    def __init__(self, temperature: float, top_k: int = 0, top_p: float = 1.0):
        if not temperature > 0 or top_k < 0 or not 0 < top_p <= 1:
            raise ValueError(f"bad sampling settings: temperature {temperature}, top_k {top_k}, top_p {top_p}")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        token = draw(scores, self.temperature, self.top_k, self.top_p)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, token, 0.0)


def truncated_logits(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """logits / T with every token outside the top-k and the top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches top_p (the
    most likely token always stays)."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # the mass of the likelier tokens already reaches top_p
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """One token id per row of `logits` [B, V], as `[B, 1]`, from the tempered, truncated distribution."""
    probs = truncated_logits(logits, temperature, top_k, top_p).softmax(-1)
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    # right=True: the first token whose cumulative mass exceeds u, never a zero-probability one
    return torch.searchsorted(cdf, u, right=True).clamp_max(cdf.shape[-1] - 1)
