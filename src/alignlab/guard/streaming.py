"""Streaming output classification: a score for each generated token, computed as it is produced,
and a stopping criterion that halts a row at the first token whose score crosses the threshold.

`TokenClassifierStream` runs the output classifier (a causal token classifier) beside the policy
with its own KV cache: `begin` reads the prompts once, then `step` reads only the newest token of
every row, so each generated token costs the classifier one single-token forward, whatever the
length so far. `GuardStop` is a transformers `StoppingCriteria`: `model.generate` calls it after
each new token, and a row it reports is finished there (generate pads it from then on). Any object
with `begin(ids, mask) -> [B]` and `step(tokens) -> [B]` (probabilities) can stand in for the
classifier (tests use a hand-made one).
"""

from __future__ import annotations

import time
from typing import Protocol

import torch
from torch import Tensor, nn
from transformers import DynamicCache, StoppingCriteria

from alignlab.ops.forward_args import cache_keyword


class StreamingScorer(Protocol):
    def begin(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...

    def step(self, tokens: Tensor) -> Tensor: ...


class TokenClassifierStream:
    """P(restricted) after each new token, from a token classifier with a KV cache.

    Rows are left-padded (as `model.generate` takes them); positions count from each row's first
    real token, as generate numbers them, so a row scores as it would alone."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.keyword = cache_keyword(model)
        self.device = next(model.parameters()).device
        self.seconds = 0.0  # time spent scoring, for the latency report
        self.calls = 0

    @torch.no_grad()
    def begin(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        tick = time.perf_counter()
        self.model.eval()
        self.mask = attention_mask.to(self.device)
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=self.mask, position_ids=positions,
                         use_cache=True, **{self.keyword: self.cache})
        self.next_position = positions[:, -1:] + 1
        self.seconds += time.perf_counter() - tick
        return torch.sigmoid(out.logits[:, -1, 0].float())

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        tick = time.perf_counter()
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(input_ids=tokens.to(self.device).view(-1, 1), attention_mask=self.mask,
                         position_ids=self.next_position, use_cache=True, **{self.keyword: self.cache})
        self.next_position = self.next_position + 1
        self.seconds += time.perf_counter() - tick
        self.calls += 1
        return torch.sigmoid(out.logits[:, -1, 0].float())


class GuardStop(StoppingCriteria):
    """Stops a row at the first generated token whose score is >= `threshold`.

    `scores[r]` holds row r's score after each generated token (up to and including the one that
    crossed); `halted_at[r]` is the index of that token in the completion (None: never crossed)."""

    def __init__(self, scorer: StreamingScorer, threshold: float, rows: int):
        self.scorer, self.threshold = scorer, threshold
        self.scores: list[list[float]] = [[] for _ in range(rows)]
        self.halted_at: list[int | None] = [None] * rows
        self.steps = 0

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        probs = self.scorer.step(input_ids[:, -1]).cpu().tolist()
        for row, p in enumerate(probs):
            if self.halted_at[row] is None:
                self.scores[row].append(p)
                if p >= self.threshold:
                    self.halted_at[row] = self.steps
        self.steps += 1
        return torch.tensor([h is not None for h in self.halted_at], device=input_ids.device)
