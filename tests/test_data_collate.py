"""Collation: length-grouped batches are a deterministic permutation that cuts padding; padding layout."""

from __future__ import annotations

import random

import pytest
import torch

from alignlab.data import TokenizedRow, collate_pairs, length_grouped_batches, pad_rows, padding_waste


def row(n: int, prompt: int = 1, start: int = 10) -> TokenizedRow:
    return TokenizedRow(list(range(start, start + n)), [0] * prompt + [1] * (n - prompt))


def varied_lengths(n: int = 1000, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 300) for _ in range(n)]


def waste_of(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


# --- length grouping --------------------------------------------------------------------------


def test_every_index_once_and_only_the_last_batch_short():
    lengths = varied_lengths(1003)
    batches = length_grouped_batches(lengths, batch_size=8, seed=1, epoch=0, group_multiplier=4)
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert all(len(b) == 8 for b in batches[:-1]) and len(batches[-1]) == 1003 % 8


def test_deterministic_per_seed_and_epoch_and_leaves_global_rngs_alone():
    lengths = varied_lengths(500)
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    first = length_grouped_batches(lengths, 8, seed=3, epoch=2)
    assert random.getstate() == python_state and torch.equal(torch.get_rng_state(), torch_state)
    assert length_grouped_batches(lengths, 8, seed=3, epoch=2) == first
    assert length_grouped_batches(lengths, 8, seed=3, epoch=3) != first
    assert length_grouped_batches(lengths, 8, seed=4, epoch=2) != first


def test_grouping_cuts_padding_waste_versus_random_batches():
    lengths = varied_lengths(2000)
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    random_batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    grouped = length_grouped_batches(lengths, 8, seed=0, epoch=0)
    random_waste, grouped_waste = waste_of(random_batches, lengths), waste_of(grouped, lengths)
    assert random_waste > 0.3
    assert grouped_waste < random_waste / 4, (grouped_waste, random_waste)


def test_without_shuffle_batches_are_sorted_by_length():
    lengths = [5, 3, 9, 1, 3, 7, 2]
    batches = length_grouped_batches(lengths, 3, seed=0, epoch=0, shuffle=False)
    assert batches == [[3, 6, 1], [4, 0, 5], [2]]
    flat = [i for b in batches for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths)


def test_invalid_batch_size():
    with pytest.raises(ValueError):
        length_grouped_batches([1, 2], 0, seed=0, epoch=0)


# --- padding ----------------------------------------------------------------------------------


def test_pad_rows_right_pads_with_masks():
    batch = pad_rows([row(3), row(5, prompt=2)], pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 0, 0], [10, 11, 12, 13, 14]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]]
    assert all(t.dtype == torch.long for t in batch.values())
    assert padding_waste(batch) == pytest.approx(2 / 10)


def test_pad_to_multiple_of():
    batch = pad_rows([row(5), row(9)], pad_id=7, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][0, 5:].eq(7).all() and batch["attention_mask"].sum() == 14


def test_collate_pairs_puts_all_chosen_rows_before_all_rejected_rows():
    pairs = [(row(4, start=100), row(2, start=200)), (row(3, start=300), row(6, start=400))]
    batch = collate_pairs(pairs, pad_id=0)
    ids = batch["input_ids"]
    assert ids.shape == (4, 6)  # [2B, T], one padded length for both halves
    assert ids[:, 0].tolist() == [100, 300, 200, 400]  # chosen 0, chosen 1, rejected 0, rejected 1
    assert batch["attention_mask"].sum(dim=1).tolist() == [4, 3, 2, 6]
    assert batch["loss_mask"].sum(dim=1).tolist() == [3, 2, 1, 5]
