"""Shared by the pairwise stages (reward model, DPO): tokenized pairs, held-out split, batches."""

from __future__ import annotations

import random

import torch

from alignlab.data.collate import collate_pairs
from alignlab.data.examples import PreferenceExample
from alignlab.data.formats import load_preferences
from alignlab.data.tokenize import TokenizedRow, tokenize_preferences

Pair = tuple[TokenizedRow, TokenizedRow]


def load_pair_splits(
    data: str, eval_data: str | None, eval_fraction: float, seed: int, tokenizer, max_length: int,
    max_prompt_length: int,
) -> tuple[list[PreferenceExample], list[PreferenceExample], list[Pair], list[Pair], dict]:
    """Train and held-out pairs: `eval_data` if given, else a seeded fraction of prompts held out."""
    train_ex = load_preferences(data)
    if eval_data:
        eval_ex = load_preferences(eval_data)
    elif eval_fraction > 0:
        prompts = sorted({str(e.prompt) for e in train_ex})
        if len(prompts) < 2:  # holding out by prompt would take every pair
            raise ValueError(
                f"{data}: all {len(train_ex)} pairs share one prompt, so no prompt can be held out for evaluation "
                "and still leave pairs to train on; pass eval_data (held-out pairs) or set eval_fraction 0"
            )
        count = min(len(prompts) - 1, max(1, round(eval_fraction * len(prompts))))
        held = set(random.Random(seed).sample(prompts, count))
        eval_ex = [e for e in train_ex if str(e.prompt) in held]
        train_ex = [e for e in train_ex if str(e.prompt) not in held]
    else:
        eval_ex = []
    train_pairs, stats = tokenize_preferences(train_ex, tokenizer, max_length, max_prompt_length)
    eval_pairs = tokenize_preferences(eval_ex, tokenizer, max_length, max_prompt_length)[0] if eval_ex else []
    return train_ex, eval_ex, train_pairs, eval_pairs, stats


def pair_lengths(pairs: list[Pair]) -> list[int]:
    return [max(len(c), len(r)) for c, r in pairs]


def pair_batch(pairs: list[Pair], idx: list[int], pad_id: int, extras: dict[str, torch.Tensor]) -> dict:
    """Chosen rows then rejected rows in one padded batch, plus per-pair tensors picked by `idx`."""
    batch = collate_pairs([pairs[i] for i in idx], pad_id)
    index = torch.tensor(idx, dtype=torch.long)
    batch.update({k: v[index] for k, v in extras.items()})
    return batch


def labels_of(examples: list[PreferenceExample]) -> torch.Tensor:
    return torch.tensor([e.label for e in examples], dtype=torch.float32)
