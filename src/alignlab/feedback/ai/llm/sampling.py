"""Per-row seeded sampling for `model.generate`, so an answer never depends on its batch-mates."""

from __future__ import annotations

import hashlib

import torch
from transformers import LogitsProcessor


class RowSampler(LogitsProcessor):
    """Sample each row's next token with the row's own generator (temperature, then top-p), and
    leave only that token possible, so generate's greedy step picks it."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device):
        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = (scores.float() / self.temperature).softmax(-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more likely tokens
            sorted_probs = sorted_probs.masked_fill(before >= self.top_p, 0.0)  # the first always stays
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        picked = torch.stack([
            torch.multinomial(probs[row], 1, generator=generator)
            for row, generator in enumerate(self.generators)
        ])
        only = torch.full_like(scores, float("-inf"))
        return only.scatter(-1, picked, 0.0)


def row_seed(seed: int, prompt_ids: list[int]) -> int:
    """The seed of one row's generator, from the request's seed and the row's prompt ids."""
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, prompt_ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
