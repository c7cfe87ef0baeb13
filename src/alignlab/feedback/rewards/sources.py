"""Reward sources behind one interface, for online RL (PPO, RLOO, GRPO, best-of-N).

A reward source turns a batch of sampled completions into one float per sample::

    source.score(batch: ScoringBatch) -> list[float]

Sources: a learned reward model (`RewardModelSource`), a built-in task's gold scorer
(`GoldSource`), a user's Python function (`CallableSource`), rule terms (`LengthPenalty`,
`MissingEOSPenalty` in `rules.py`), and a weighted sum of any of them (`WeightedSum`), which also
reports each term so a run can log what drives its reward.

Training loops call `score_safely` (in `scoring.py`), not `score`: it turns a failure on one sample (a NaN, an
exception on one odd completion) into that sample being left out and reported, instead of a lost
batch or a NaN loss. Recipes describe rewards in YAML with `RewardSpec` and build them with
`build_reward`::

    reward:
      - {type: reward_model, path: "@reward_model/model"}
      - {type: missing_eos, penalty: -1.0}
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from transformers import PreTrainedTokenizerBase

from alignlab.models import load_reward_model, resolve_device, reward_scores
from alignlab.tasks import TaskSpec, get_task, task_name


# --------------------------------------------------------------------------- the batch


@dataclass
class ScoringBatch:
    """Sampled completions to score, as text and as ids, one entry per sample in every field.

    `completions` is the decoded text without special tokens; `completion_ids` are the sampled
    ids, EOS included when one was produced; `finished[i]` says whether sample i ended with EOS.
    """

    prompts: list[str]
    completions: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    finished: list[bool]

    def __post_init__(self) -> None:
        n = len(self.prompts)
        for name in ("completions", "prompt_ids", "completion_ids", "finished"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"ScoringBatch needs one entry per sample in every field: {n} prompts but "
                    f"{len(getattr(self, name))} {name}"
                )

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, indices: Sequence[int]) -> ScoringBatch:
        """The samples at `indices`, in that order."""
        return ScoringBatch(
            prompts=[self.prompts[i] for i in indices],
            completions=[self.completions[i] for i in indices],
            prompt_ids=[self.prompt_ids[i] for i in indices],
            completion_ids=[self.completion_ids[i] for i in indices],
            finished=[self.finished[i] for i in indices],
        )

    @classmethod
    def from_sampled(
        cls,
        prompts: list[str],
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        tokenizer: PreTrainedTokenizerBase,
    ) -> ScoringBatch:
        """Build a batch from what `alignlab.rollout.generate` returns: decode, and mark EOS endings."""
        eos = tokenizer.eos_token_id
        return cls(
            prompts=list(prompts),
            completions=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
            prompt_ids=[list(ids) for ids in prompt_ids],
            completion_ids=[list(ids) for ids in completion_ids],
            finished=[bool(ids) and ids[-1] == eos for ids in completion_ids],
        )


@runtime_checkable
class RewardSource(Protocol):
    """Anything with a `name` (used in logs and term names) that scores a batch, one float per sample."""

    name: str

    def score(self, batch: ScoringBatch) -> list[float]: ...


class RewardError(RuntimeError):
    """Scoring failed and the run must stop; the message names the sample and the cause."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class RewardOutputError(RewardError):
    """A source returned something other than one score per sample: a bug, never skipped."""


def describe_reward(source: RewardSource) -> str:
    """A one-line description for logs: the source's `describe()` when it has one, else its name."""
    describe = getattr(source, "describe", None)
    return describe() if callable(describe) else source.name


# --------------------------------------------------------------------------- sources


class RewardModelSource:
    """Scores prompt + completion ids with a reward model (`alignlab.models.load_reward_model`).

    It reads the policy's ids as they were sampled, so the reward model must use the policy's
    tokenizer (pass that tokenizer here; its pad token is the one the model pools around).

    Rows are right-padded with the tokenizer's pad token, so the model's own pooling reads the
    score at the last real token (see `reward_scores`); samples of similar length share a
    forward pass. Scoring runs without gradients, in eval mode, and puts the model back in the
    mode it was in.
    """

    name = "reward_model"

    def __init__(
        self,
        path_or_model: str | Path | torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        device: str | torch.device | None = None,
        batch_size: int = 64,
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; load it with alignlab.models.load_tokenizer")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(path_or_model, (str, Path)):
            self.model = load_reward_model(path_or_model, tokenizer, device=device)
            self.where = str(path_or_model)
        else:
            self.model = path_or_model
            self.where = str(getattr(self.model.config, "name_or_path", "") or type(self.model).__name__)
            if device is not None:
                self.model.to(resolve_device(device))
            # The pooling looks for config.pad_token_id; padding with another id would be scored.
            if self.model.config.pad_token_id != tokenizer.pad_token_id:
                raise ValueError(
                    f"the reward model's config.pad_token_id ({self.model.config.pad_token_id}) is not the "
                    f"tokenizer's pad token ({tokenizer.pad_token_id}); load it with load_reward_model(path, tokenizer)"
                )
        self.pad_id = tokenizer.pad_token_id
        self.batch_size = batch_size

    def score(self, batch: ScoringBatch) -> list[float]:
        rows = [list(p) + list(c) for p, c in zip(batch.prompt_ids, batch.completion_ids)]
        for i, row in enumerate(rows):
            if not row:
                raise ValueError(f"sample {i} has no tokens (empty prompt and completion)")
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        scores = [0.0] * len(rows)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    ids, mask = right_pad([rows[i] for i in chunk], self.pad_id)
                    values = reward_scores(self.model, ids.to(device), mask.to(device)).tolist()
                    for i, value in zip(chunk, values):
                        scores[i] = value
        finally:
            self.model.train(was_training)
        return scores

    def describe(self) -> str:
        return f"reward_model({self.where})"


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of shape [B, longest row], padded on the right with `pad_id`."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, : len(row)] = 1
    return ids, mask


class GoldSource:
    """A built-in task's true score (`Task.gold_reward(prompts, completions)`), e.g. VADER for sentiment."""

    def __init__(self, task: TaskSpec):
        self.task = get_task(task)
        self.name = f"gold:{task_name(task)}"

    def score(self, batch: ScoringBatch) -> list[float]:
        return as_score_list(self.task.gold_reward(list(batch.prompts), list(batch.completions)), self.name)


class CallableSource:
    """A user's Python function as a reward, given as "package.module:function" (or the function).

    The function is called once per batch as ``fn(prompts: list[str], completions: list[str])``
    and must return one number per sample (a list, tuple, numpy array or 1-d tensor). A NaN or a
    value that is not a number makes that sample invalid under `score_safely`; an exception makes
    `score_safely` retry sample by sample to find the samples that raise.
    """

    def __init__(self, spec_or_function: str | Callable[[list[str], list[str]], Sequence[float]]):
        if callable(spec_or_function):
            self.function = spec_or_function
            self.spec = f"{spec_or_function.__module__}:{getattr(spec_or_function, '__qualname__', '?')}"
        else:
            self.function = import_function(spec_or_function)
            self.spec = spec_or_function
        self.name = f"callable:{self.spec}"

    def score(self, batch: ScoringBatch) -> list[float]:
        return as_score_list(self.function(list(batch.prompts), list(batch.completions)), self.name)


_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def check_function_spec(spec: str) -> str:
    """Raise a ValueError naming `spec` unless it looks like "package.module:function"."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"reward function {spec!r}: expected 'package.module:function' (module, a colon, a name)")
    if not _SPEC.match(spec):
        raise ValueError(f"reward function {spec!r}: not of the form 'package.module:function'")
    return spec


def import_function(spec: str) -> Callable:
    """Import the function named by "package.module:function" (the name may be dotted: "mod:Class.method")."""
    module_name, _, attribute = check_function_spec(spec).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Tell "the module does not exist" from "the module exists but one of its imports does not".
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ValueError(
                f"reward function {spec!r}: no module named {module_name!r} (is it installed, or on sys.path?)"
            ) from err
        raise ValueError(f"reward function {spec!r}: importing {module_name!r} failed: {err}") from err
    except Exception as err:
        raise ValueError(f"reward function {spec!r}: importing {module_name!r} failed: {type(err).__name__}: {err}") from err
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"reward function {spec!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        # A ValueError like every other bad-spec error, so config code catches one type.
        raise ValueError(f"reward function {spec!r}: {attribute!r} is a {type(target).__name__}, not a function")  # noqa: TRY004
    return target


def as_score_list(values: Any, source_name: str) -> list:
    """`values` as a plain list, or a RewardOutputError when it is not one score per sample at all."""
    if hasattr(values, "tolist"):  # numpy arrays and tensors
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise RewardOutputError(
            f"{source_name} returned a {type(values).__name__}; a reward source returns a list with one score per sample"
        )
    return list(values)


class WeightedSum:
    """Σ weight × term: several objectives as one reward, each term also reported on its own.

    Term names are the sources' names ("reward_model", "missing_eos", ...), made unique with a
    "#2", "#3" suffix when a name repeats.
    """

    name = "weighted_sum"

    def __init__(self, terms: Sequence[tuple[RewardSource, float]]):
        if not terms:
            raise ValueError("WeightedSum needs at least one (source, weight) term")
        self.terms: list[tuple[str, RewardSource, float]] = []
        seen: dict[str, int] = {}
        for source, weight in terms:
            if not math.isfinite(weight):
                raise ValueError(f"the weight of {source.name} must be a finite number, got {weight}")
            seen[source.name] = seen.get(source.name, 0) + 1
            term_name = source.name if seen[source.name] == 1 else f"{source.name}#{seen[source.name]}"
            self.terms.append((term_name, source, float(weight)))

    def score_terms(self, batch: ScoringBatch) -> dict[str, list[float]]:
        """Each term's raw (unweighted) scores, by term name."""
        out = {}
        for term_name, source, _ in self.terms:
            values = as_score_list(source.score(batch), source.name)
            check_count(source.name, values, len(batch))
            out[term_name] = [float(v) for v in values]
        return out

    def score(self, batch: ScoringBatch) -> list[float]:
        raw = self.score_terms(batch)
        return [
            sum(weight * raw[term_name][i] for term_name, _, weight in self.terms) for i in range(len(batch))
        ]

    def describe(self) -> str:
        return " + ".join(f"{weight:g} * {describe_reward(source)}" for _, source, weight in self.terms)


def check_count(source_name: str, values: Sequence, n: int) -> None:
    if len(values) != n:
        raise RewardOutputError(f"{source_name} returned {len(values)} scores for {n} samples; it must return one per sample")
