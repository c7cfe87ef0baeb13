"""A guard around local sampling: the input classifier refuses prompts, the streaming output
classifier halts generation at the first token it flags.

`guarded_sample` is `alignlab.rollout.local.sample` with the streaming classifier as its stop rule,
so it batches, draws and seeds exactly as unguarded sampling does (every `SamplingSettings` option
holds) and a guard that never fires returns exactly the unguarded samples. Then:

- a prompt whose input score is >= `input_threshold` is not sent to the policy at all: its
  completion is empty and its text is the fixed refusal message;
- otherwise every generated token is scored as it is produced (`GuardStop` inside `generate`), and
  a row stops at the first token scoring >= `output_threshold`. The completion keeps that token (it
  was drawn, and a trainer that penalises the halt should push down the token that caused it);
  what a user sees (`shown_ids`, `texts`) drops it and everything after it: the fixed message.

The classifiers must share the policy's tokenizer (the guard reads the policy's token ids).
`GuardedSampler` is the `Sampler` form for code that takes one (RL rollouts): blocked rows come
back with empty completions, halted ones ending at the flagged token, `finished` False for both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from alignlab.feedback.ai.llm.gate import ReplyGate
from alignlab.guard.models import prompt_scores
from alignlab.guard.streaming import GuardStop, StreamingScorer, TokenClassifierStream
from alignlab.rollout.base import Rollouts
from alignlab.rollout.local import SamplingSettings, sample

REFUSAL_MESSAGE = "I'm sorry, but I can't help with that request."


@dataclass
class Guard:
    """The classifiers and their thresholds. Either classifier may be None (that check is off);
    `output` may be a model (streamed with its KV cache) or any `StreamingScorer` factory."""

    input: nn.Module | None = None
    output: nn.Module | None = None
    input_threshold: float = 0.5
    output_threshold: float = 0.5
    message: str = REFUSAL_MESSAGE
    scorer_factory: Callable[[], StreamingScorer] | None = None  # default: a TokenClassifierStream on `output`

    def stream(self) -> StreamingScorer | None:
        if self.scorer_factory is not None:
            return self.scorer_factory()
        return TokenClassifierStream(self.output) if self.output is not None else None

    @property
    def streams(self) -> bool:
        """Whether generated tokens are scored (an output classifier or a scorer factory is set)."""
        return self.output is not None or self.scorer_factory is not None

    def stop(self, ids: Tensor, mask: Tensor) -> GuardStop:
        """The stopping criterion for one generate call over left-padded `ids`: a fresh stream that
        has read the prompts."""
        stream = self.stream()
        stream.begin(ids, mask)
        return GuardStop(stream, self.output_threshold, ids.shape[0])

    def screen(self, prompts: list[list[int]], pad_id: int) -> tuple[list[float | None], list[bool]]:
        """Each prompt's input score (None without an input classifier) and whether it is refused."""
        if self.input is None:
            return [None] * len(prompts), [False] * len(prompts)
        scores = prompt_scores(self.input, prompts, pad_id)
        return scores, [s >= self.input_threshold for s in scores]

    def gate(self, pad_id: int) -> ReplyGate:
        """This guard as `LocalLLM`'s gate, for `serve-llm` and every LLM-backend call."""
        return ReplyGate(self.message, refuse=(lambda prompts: self.screen(prompts, pad_id)[1]) if self.input else None,
                         stop_rule=(lambda batch, ids, mask: self.stop(ids, mask)) if self.streams else None,
                         name=f"guard(input>={self.input_threshold}, output>={self.output_threshold})")


@dataclass
class GuardedRollouts(Rollouts):
    """Rollouts with what the guard did to each row."""

    input_scores: list[float | None] = field(default_factory=list)
    blocked: list[bool] = field(default_factory=list)
    halted_at: list[int | None] = field(default_factory=list)
    """index of the completion token that crossed the output threshold (its last; never shown to a
    user); None: not halted"""
    output_scores: list[list[float]] = field(default_factory=list)
    """per row, the output score after each completion token (the crossing one last)"""
    seconds: dict = field(default_factory=dict)
    message: str = REFUSAL_MESSAGE

    def verdicts(self) -> list[str | None]:
        return ["input" if b else "output" if h is not None else None for b, h in zip(self.blocked, self.halted_at)]

    def shown_ids(self) -> list[list[int]]:
        """The tokens a user sees of each completion: none when blocked, those before the crossing
        token when halted (the fixed message stands in for the rest)."""
        return [ids[:h] if h is not None else ([] if b else ids)
                for ids, b, h in zip(self.completion_ids, self.blocked, self.halted_at)]

    def texts(self, tokenizer) -> list[str]:
        """What a user sees: the fixed message for a guarded row, else the decoded completion."""
        return [self.message if verdict else tokenizer.decode(ids, skip_special_tokens=True)
                for verdict, ids in zip(self.verdicts(), self.completion_ids)]


@torch.no_grad()
def guarded_sample(model: nn.Module, prompts: list[list[int]], settings: SamplingSettings, guard: Guard, *,
                   pad_id: int, eos_id: int, seed: int = 0) -> GuardedRollouts:
    """Sample one completion per prompt through `guard` (see the module doc)."""
    tick = time.perf_counter()
    scores, blocked = guard.screen(prompts, pad_id)
    input_seconds = time.perf_counter() - tick
    allowed = [prompts[i] for i in range(len(prompts)) if not blocked[i]]
    watch = _Watch(guard)
    tick = time.perf_counter()
    drawn = sample(model, allowed, settings, pad_id=pad_id, eos_id=eos_id, seed=seed,
                   stop_rule=watch.stop_rule if guard.streams else None)
    seconds = {"input": input_seconds, "generate": time.perf_counter() - tick, "output_scoring": watch.seconds()}
    halts, streamed = watch.seen(len(allowed))
    return assemble(guard, prompts, scores, blocked, drawn, halts, streamed, seconds)


def assemble(guard: Guard, prompts: list[list[int]], input_scores: list[float | None], blocked: list[bool],
             drawn: Rollouts, halts: list[int | None], streamed: list[list[float]], seconds: dict) -> GuardedRollouts:
    """The guarded rollouts of all prompts from the samples `drawn` of the prompts not blocked (in
    order) and where the output classifier flagged each (None: nowhere): a row flagged within its
    completion ends at the flagged token, unfinished; a flag after EOS (generate pads there) is none."""
    n = len(prompts)
    completions: list[list[int]] = [[] for _ in prompts]
    logps: list[list[float]] = [[] for _ in prompts]
    finished, halted_at = [False] * n, [None] * n
    output_scores: list[list[float]] = [[] for _ in prompts]
    allowed = [i for i in range(n) if not blocked[i]]
    for j, i in enumerate(allowed):
        at = halts[j] if halts[j] is not None and halts[j] < len(drawn.completion_ids[j]) else None
        end = len(drawn.completion_ids[j]) if at is None else at + 1
        completions[i], logps[i], output_scores[i] = drawn.completion_ids[j][:end], drawn.logps[j][:end], streamed[j][:end]
        halted_at[i], finished[i] = at, drawn.finished[j] and at is None
    return GuardedRollouts([list(p) for p in prompts], completions, logps, finished, input_scores=input_scores,
                           blocked=blocked, halted_at=halted_at, output_scores=output_scores, message=guard.message,
                           seconds=seconds)


def shown_samples(model: nn.Module, prompts: list[list[int]], settings: SamplingSettings, guard: Guard | None,
                  tokenizer, *, seed: int = 0) -> tuple[list[list[int]], list[str], list[str | None]]:
    """What a user is shown for each prompt, bare (`guard` None) or behind `guard`: the tokens,
    the text and what withheld it (input, output or None), for the evaluation stages."""
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    if guard is None:
        ids = sample(model, prompts, settings, pad_id=pad_id, eos_id=eos_id, seed=seed).completion_ids
        return ids, tokenizer.batch_decode(ids, skip_special_tokens=True), [None] * len(ids)
    guarded = guarded_sample(model, prompts, settings, guard, pad_id=pad_id, eos_id=eos_id, seed=seed)
    return guarded.shown_ids(), guarded.texts(tokenizer), guarded.verdicts()


class _Watch:
    """The guard's stop rule for `sample` (a `GuardStop` over a fresh stream per batch), and what
    it saw of each sampled row once sampling is over."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.batches: list[tuple[list[int], GuardStop]] = []

    def stop_rule(self, batch: list[int], ids: Tensor, mask: Tensor) -> GuardStop:
        stop = self.guard.stop(ids, mask)
        self.batches.append((batch, stop))
        return stop

    def seen(self, n: int) -> tuple[list[int | None], list[list[float]]]:
        """Per sampled row: the step it was halted at (None: never), and its score after every step."""
        halts: list[int | None] = [None] * n
        scores: list[list[float]] = [[] for _ in range(n)]
        for batch, stop in self.batches:
            for row, j in enumerate(batch):
                halts[j], scores[j] = stop.halted_at[row], stop.scores[row]
        return halts, scores

    def seconds(self) -> float:
        return sum(getattr(stop.scorer, "seconds", 0.0) for _, stop in self.batches)


class GuardedSampler:
    """The `Sampler` for a local model behind a guard."""

    def __init__(self, model: nn.Module, guard: Guard, pad_id: int, eos_id: int):
        self.model, self.guard, self.pad_id, self.eos_id = model, guard, pad_id, eos_id

    def sample(self, prompts: list[list[int]], settings: SamplingSettings, seed: int = 0) -> GuardedRollouts:
        return guarded_sample(self.model, prompts, settings, self.guard, pad_id=self.pad_id, eos_id=self.eos_id,
                              seed=seed)
