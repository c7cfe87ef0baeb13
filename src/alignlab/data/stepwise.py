"""Step-labelled data for process reward models (PRMs).

Format (as TRL's stepwise-supervision datasets, e.g. Math-Shepherd converted)::

    {"prompt": "What is 2 + 3 * 4?",
     "completions": ["3 * 4 = 12", "2 + 12 = 14", "The answer is 14"],
     "labels": [true, true, true]}

`completions` are the steps of one solution, in order; `labels` says for each step whether it is
correct. Labels are JSON booleans; the integers 0 and 1 are accepted too, because datasets stored
as parquet or converted by pandas often hold them as ints. Any other value is an error.

Tokenization puts the prompt first, then every step followed by the separator. The PRM scores a
step at the last token of that step's separator (or, with an empty separator, at the step's last
token): there it has read the whole step and knows the step is over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignlab.data.errors import DataError, Source
from alignlab.data.fields import describe_value, required_field, shown_value
from alignlab.data.readers import read_records
from alignlab.data.tokenize import _encode, _specials, _with_bos


@dataclass
class StepExample:
    """A prompt, the steps of one solution, and whether each step is correct."""

    prompt: str
    completions: list[str]
    labels: list[bool]
    source: Source


@dataclass
class StepRow:
    """One tokenized solution: ids, where each step is scored, and that step's label."""

    input_ids: list[int]
    step_positions: list[int]
    step_labels: list[bool]

    def __len__(self) -> int:
        return len(self.input_ids)


# --- loading ----------------------------------------------------------------------------------


def load_stepwise(path: str | Path, split: str | None = None) -> list[StepExample]:
    """Step-labelled examples from a data file or dataset directory (see `read_records`)."""
    return [parse_stepwise_record(record, source) for record, source in read_records(path, split)]


def parse_stepwise_record(record: dict, source: Source) -> StepExample:
    """One StepExample; DataError naming the file, line and field for anything malformed."""
    prompt = required_field(record, "prompt", source)
    if not isinstance(prompt, str):
        raise DataError(source, "prompt", f"must be a string (got {describe_value(prompt)})")
    if not prompt.strip():
        raise DataError(source, "prompt", "empty prompt")
    completions = _steps(required_field(record, "completions", source), source)
    labels = _labels(required_field(record, "labels", source), source)
    if len(labels) != len(completions):
        raise DataError(
            source, "labels",
            f"has {len(labels)} labels for {len(completions)} steps; need one label per step",
        )
    return StepExample(prompt, completions, labels, source)


def _steps(value: Any, source: Source) -> list[str]:
    if not isinstance(value, list) or not value:
        raise DataError(source, "completions", f"must be a non-empty list of step strings (got {describe_value(value)})")
    for i, step in enumerate(value):
        if not isinstance(step, str):
            raise DataError(source, "completions", f"completions[{i}]: must be a string (got {describe_value(step)})")
        if not step.strip():
            raise DataError(source, "completions", f"completions[{i}]: empty step")
    return list(value)


def _labels(value: Any, source: Source) -> list[bool]:
    if not isinstance(value, list):
        raise DataError(source, "labels", f"must be a list of booleans (got {describe_value(value)})")
    labels = []
    for i, label in enumerate(value):
        # bool is a subclass of int, so this accepts true/false and the ints 0/1 only.
        if not isinstance(label, int) or label not in (0, 1):
            raise DataError(
                source, "labels",
                f"labels[{i}]: must be true/false (or 0/1) (got {shown_value(label)})",
            )
        labels.append(bool(label))
    return labels


# --- tokenization -----------------------------------------------------------------------------


def tokenize_stepwise(
    examples: Sequence[StepExample],
    tokenizer: Any,
    max_length: int,
    separator: str = "\n",
) -> tuple[list[StepRow], dict]:
    """Tokenize step-labelled examples into StepRows, and stats about what was cut.

    Prompt, steps and separator are tokenized separately without special tokens (BOS is
    prepended to the prompt when the tokenizer has one, as `alignlab.data.tokenize` does), so
    every scored position is exact. Steps that would end past `max_length` are dropped from the
    end, whole; an example whose first step (with its separator) does not fit is a DataError on
    "completions".

    stats: examples, steps (kept), dropped_steps, truncated (examples that lost steps),
    truncated_fraction, tokens.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1 (got {max_length})")
    specials = _specials(tokenizer, need_eos=False)
    separator_ids = _encode(tokenizer, [separator])[0] if separator else []
    prompt_ids = _encode(tokenizer, [ex.prompt for ex in examples])
    # All steps of all examples in one batched call, then split back per example.
    flat_steps = _encode(tokenizer, [step for ex in examples for step in ex.completions])

    rows, kept_steps, dropped, truncated, cursor = [], 0, 0, 0, 0
    for ex, p_ids in zip(examples, prompt_ids):
        step_ids = flat_steps[cursor:cursor + len(ex.completions)]
        cursor += len(ex.completions)
        row = _assemble(ex, _with_bos(specials, ex.prompt, p_ids), step_ids, separator_ids, max_length)
        rows.append(row)
        kept_steps += len(row.step_positions)
        lost = len(ex.completions) - len(row.step_positions)
        dropped += lost
        truncated += lost > 0
    stats = {
        "examples": len(rows),
        "steps": kept_steps,
        "dropped_steps": dropped,
        "truncated": truncated,
        "truncated_fraction": truncated / len(rows) if rows else 0.0,
        "tokens": sum(len(r) for r in rows),
    }
    return rows, stats


def _assemble(
    ex: StepExample,
    prompt_ids: list[int],
    step_ids: list[list[int]],
    separator_ids: list[int],
    max_length: int,
) -> StepRow:
    input_ids = list(prompt_ids)
    positions: list[int] = []
    for i, ids in enumerate(step_ids):
        piece = [*ids, *separator_ids]
        if len(input_ids) + len(piece) > max_length:
            if i == 0:
                raise DataError(
                    ex.source, "completions",
                    f"the first step does not fit: the prompt takes {len(input_ids)} tokens and the "
                    f"step with its separator {len(piece)}, more than max_length={max_length}",
                )
            break  # this step and all later ones are dropped
        input_ids.extend(piece)
        positions.append(len(input_ids) - 1)
    return StepRow(input_ids, positions, list(ex.labels[: len(positions)]))


# --- batching ---------------------------------------------------------------------------------


def pad_step_rows(rows: Sequence[StepRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad StepRows into [B, T] tensors.

    input_ids and attention_mask (long); step_mask (long) is 1 at every scored position;
    step_targets (float32) holds the step's label (1.0 correct, 0.0 wrong) at scored positions
    and 0 elsewhere, so it is only meaningful where step_mask is 1.
    """
    if not rows:
        raise ValueError("cannot pad an empty list of rows")
    width = max(len(row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    step_mask = torch.zeros(shape, dtype=torch.long)
    step_targets = torch.zeros(shape, dtype=torch.float32)
    for i, row in enumerate(rows):
        n = len(row)
        input_ids[i, :n] = torch.tensor(row.input_ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        positions = torch.tensor(row.step_positions, dtype=torch.long)
        step_mask[i, positions] = 1
        step_targets[i, positions] = torch.tensor(row.step_labels, dtype=torch.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "step_mask": step_mask,
        "step_targets": step_targets,
    }


__all__ = [
    "StepExample",
    "StepRow",
    "load_stepwise",
    "pad_step_rows",
    "parse_stepwise_record",
    "tokenize_stepwise",
]
