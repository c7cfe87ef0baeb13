"""A hand-made streaming scorer for the guard's tests: it flags exactly one token id."""

from __future__ import annotations

import torch


class TokenTrigger:
    """1.0 when the newest token is `trigger`, else 0.0 (the `StreamingScorer` protocol)."""

    def __init__(self, trigger: int):
        self.trigger, self.calls = trigger, 0

    def begin(self, input_ids, attention_mask):
        return torch.zeros(input_ids.shape[0])

    def step(self, tokens):
        self.calls += 1
        return (tokens == self.trigger).float()
