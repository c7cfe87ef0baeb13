"""A guard around local sampling: the input classifier refuses prompts, the streaming output
classifier halts generation at the first token it flags.

`guarded_sample` is `alignlab.rollout.local.sample` with a guard: the same batching (prompts sorted
by length, left-padded, `settings.batch_size` per generate call), the same inverse-CDF draw and
seeding, so a guard that never fires returns exactly the unguarded samples. Then:

- a prompt whose input score is >= `input_threshold` is not sent to the policy at all: its
  completion is empty and its text is the fixed refusal message;
- otherwise every generated token is scored as it is produced (`GuardStop` inside `generate`), and
  a row stops at the first token scoring >= `output_threshold`; that token and everything after it
  are dropped (the user never sees them) and the text is the message.

The classifiers must share the policy's tokenizer (the guard reads the policy's token ids).
`GuardedSampler` is the `Sampler` form for code that takes one (rollouts): blocked rows come back
with empty completions and halted ones cut, each with its log-probs, and `finished` False.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from alignlab.guard.models import prompt_scores
from alignlab.guard.streaming import GuardStop, StreamingScorer, TokenClassifierStream
from alignlab.rollout.base import Rollouts
from alignlab.rollout.draw import InverseCDFDraw
from alignlab.rollout.local import SamplingSettings, left_pad, seeded, tempered_logps

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


@dataclass
class GuardedRollouts(Rollouts):
    """Rollouts with what the guard did to each row."""

    input_scores: list[float | None] = field(default_factory=list)
    blocked: list[bool] = field(default_factory=list)
    halted_at: list[int | None] = field(default_factory=list)
    """index of the completion token that crossed the output threshold (dropped); None: not halted"""
    output_scores: list[list[float]] = field(default_factory=list)
    """per row, the output score after each generated token up to the end or the crossing token"""
    seconds: dict = field(default_factory=dict)
    message: str = REFUSAL_MESSAGE

    def verdicts(self) -> list[str | None]:
        return ["input" if b else "output" if h is not None else None for b, h in zip(self.blocked, self.halted_at)]

    def texts(self, tokenizer) -> list[str]:
        """What a user sees: the fixed message for a guarded row, else the decoded completion."""
        return [self.message if verdict else tokenizer.decode(ids, skip_special_tokens=True)
                for verdict, ids in zip(self.verdicts(), self.completion_ids)]


def _cut(drawn: list[int], logps: list[float], eos_id: int, halted: int | None) -> tuple[list[int], list[float], int | None]:
    """The completion up to and including EOS, or up to (not including) the crossing token; the
    halt counts only if it came before EOS or at it (after EOS generate only pads)."""
    end = next((i + 1 for i, token in enumerate(drawn) if token == eos_id), len(drawn))
    if halted is not None and halted < end:
        return drawn[:halted], logps[:halted], halted
    return drawn[:end], logps[:end], None


@torch.no_grad()
def guarded_sample(model: nn.Module, prompts: list[list[int]], settings: SamplingSettings, guard: Guard, *,
                   pad_id: int, eos_id: int, seed: int = 0) -> GuardedRollouts:
    """Sample one completion per prompt through `guard` (see the module doc)."""
    if settings.cache != "dynamic":
        raise ValueError("a guarded sampler needs sampling.cache: dynamic (the stream scores step by step)")
    device = next(model.parameters()).device
    n = len(prompts)
    tick = time.perf_counter()
    scores: list[float | None] = [None] * n
    if guard.input is not None:
        scores = prompt_scores(guard.input, prompts, pad_id)
    blocked = [s is not None and s >= guard.input_threshold for s in scores]
    input_seconds = time.perf_counter() - tick
    config = GenerationConfig(do_sample=False, max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id,
                              eos_token_id=eos_id, use_cache=True, output_logits=True, return_dict_in_generate=True)
    processors = LogitsProcessorList([InverseCDFDraw(settings.temperature, settings.top_k, settings.top_p)])
    completions: list[list[int]] = [[] for _ in prompts]
    logps: list[list[float]] = [[] for _ in prompts]
    halted: list[int | None] = [None] * n
    streamed: list[list[float]] = [[] for _ in prompts]
    order = sorted((i for i in range(n) if not blocked[i]), key=lambda i: len(prompts[i]))
    score_seconds, tick = 0.0, time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with seeded(device, seed):
            for start in range(0, len(order), settings.batch_size):
                idx = order[start : start + settings.batch_size]
                ids, mask = left_pad([prompts[i] for i in idx], pad_id)
                stream = guard.stream()
                criteria = None
                if stream is not None:
                    stream.begin(ids, mask)
                    stop = GuardStop(stream, guard.output_threshold, len(idx))
                    criteria = StoppingCriteriaList([stop])
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                     logits_processor=processors, stopping_criteria=criteria)
                drawn = out.sequences[:, ids.shape[1] :]
                tempered = tempered_logps(out.logits, drawn, settings.temperature)
                for row, i in enumerate(idx):
                    at = stop.halted_at[row] if stream is not None else None
                    completions[i], logps[i], halted[i] = _cut(drawn[row].tolist(), tempered[row].tolist(), eos_id, at)
                    if stream is not None:
                        kept = len(completions[i]) + (halted[i] is not None)
                        streamed[i] = stop.scores[row][:kept]
                score_seconds += getattr(stream, "seconds", 0.0)
    finally:
        model.train(was_training)
    finished = [bool(c) and c[-1] == eos_id and h is None for c, h in zip(completions, halted)]
    generate_seconds = time.perf_counter() - tick
    return GuardedRollouts(
        [list(p) for p in prompts], completions, logps, finished, input_scores=scores, blocked=blocked,
        halted_at=halted, output_scores=streamed, message=guard.message,
        seconds={"input": input_seconds, "generate": generate_seconds, "output_scoring": score_seconds},
    )


class GuardedSampler:
    """The `Sampler` for a local model behind a guard."""

    def __init__(self, model: nn.Module, guard: Guard, pad_id: int, eos_id: int):
        self.model, self.guard, self.pad_id, self.eos_id = model, guard, pad_id, eos_id

    def sample(self, prompts: list[list[int]], settings: SamplingSettings, seed: int = 0) -> GuardedRollouts:
        return guarded_sample(self.model, prompts, settings, self.guard, pad_id=self.pad_id, eos_id=self.eos_id,
                              seed=seed)
