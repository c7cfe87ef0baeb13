"""Batches that waste little compute on padding.

Padding every row of a batch to its longest row costs compute on pad tokens. Grouping rows of
similar length into the same batch cuts that waste; doing it inside shuffled "mega-chunks"
(rather than over the whole dataset) keeps batches random enough for training.
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence

import torch

from alignlab.data.tokenize import TokenizedRow


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    group_multiplier: int = 32,
) -> list[list[int]]:
    """Index batches in which rows of similar length sit together.

    With `shuffle`: the indices are shuffled, taken in chunks of ``batch_size * group_multiplier``,
    each chunk is sorted by length and cut into batches, and the batch order is shuffled. The
    result depends only on (seed, epoch) and the lengths; the global RNGs are not touched.
    Without `shuffle`: indices sorted by length (shortest first, ties in index order), in order.

    Every index appears exactly once; only the last batch may be smaller than `batch_size`.
    """
    if batch_size < 1 or group_multiplier < 1:
        raise ValueError(f"batch_size and group_multiplier must be >= 1 (got {batch_size}, {group_multiplier})")
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda i: lengths[i])
        return _chunks(order, batch_size)

    # A private generator seeded from (seed, epoch): reproducible, and no side effects elsewhere.
    rng = random.Random(f"alignlab-length-groups:{seed}:{epoch}")
    rng.shuffle(order)
    chunk_size = batch_size * group_multiplier
    batches: list[list[int]] = []
    for chunk in _chunks(order, chunk_size):
        chunk.sort(key=lambda i: lengths[i])
        batches.extend(_chunks(chunk, batch_size))
    # Only the very last batch of the last chunk can be short; keep it at the end.
    short = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    rng.shuffle(batches)
    return batches + short


def pad_rows(
    rows: Sequence[TokenizedRow], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad rows into long tensors input_ids, attention_mask, loss_mask of shape [B, T].

    T is the longest row, rounded up to a multiple of `pad_to_multiple_of` if given (tensor-core
    friendly shapes on GPUs). Padding positions have attention 0 and loss 0.
    """
    if not rows:
        raise ValueError("cannot pad an empty list of rows")
    width = max(len(row) for row in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row)
        input_ids[i, :n] = torch.tensor(row.input_ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(row.loss_mask, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def collate_pairs(
    pairs: Sequence[tuple[TokenizedRow, TokenizedRow]],
    pad_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """One [2B, T] batch: the B chosen rows first, then the B rejected rows, padded to one length.

    Chosen and rejected then go through the model in a single forward pass; split the outputs
    with ``out[:B]`` (chosen) and ``out[B:]`` (rejected).
    """
    if not pairs:
        raise ValueError("cannot collate an empty list of pairs")
    rows = [chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs]
    return pad_rows(rows, pad_id, pad_to_multiple_of)


def padding_waste(batch: Mapping[str, torch.Tensor]) -> float:
    """Fraction of the batch's positions that are padding (0.0 = no waste)."""
    mask = batch["attention_mask"]
    if mask.numel() == 0:
        return 0.0
    return 1.0 - mask.sum().item() / mask.numel()


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
