"""The guard around any sampler (a vLLM engine or server): the output classifier reads each finished
completion token by token, exactly as it would have streamed it, and the completion is cut at the
first flagged token.

A streaming guard stops a row at the first token scoring at or above the threshold; it never changes
the tokens before it. So a completion drawn unguarded and cut afterwards at that same token is the
completion the streaming guard returns for the same draws: only the compute past the cut is spent in
vain. That is what lets an engine with no per-token hook (vLLM) sample behind the guard. (The local
sampler's draws come from one random stream, and a streaming guard that ends a batch early shifts
it for the next batch: across batches the two give other, equally distributed, samples.) The replay
feeds the scorer the same single-token steps the stream does (`StreamingScorer.step`), in the same
batches, so the scores are the streaming ones bit for bit (with `sampling.cache: static` the sampler
pads prompts wider, and they agree to float rounding).
"""

from __future__ import annotations

import time

import torch

from alignlab.guard.sampler import Guard, GuardedRollouts, assemble
from alignlab.rollout.base import Sampler
from alignlab.rollout.local import SamplingSettings, left_pad


@torch.no_grad()
def replay_scores(guard: Guard, prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                  batch_size: int = 64) -> list[list[float]]:
    """The output score after every token of each completion, as the stream would have given it.

    Rows are batched as the local sampler batches them (sorted by prompt length, `batch_size` at a
    time) and a row past its end reads padding, as generate feeds a finished row: each batch then
    has the same shapes as the stream's, and the scores are the streaming ones bit for bit."""
    scores: list[list[float]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        stream = guard.stream()
        stream.begin(*left_pad([prompts[i] for i in rows], pad_id))
        for t in range(max(len(completions[i]) for i in rows)):
            tokens = torch.tensor([completions[i][t] if t < len(completions[i]) else pad_id for i in rows])
            for i, p in zip(rows, stream.step(tokens).cpu().tolist()):
                if t < len(completions[i]):
                    scores[i].append(p)
    return scores


class ReplayGuardedSampler:
    """A `Sampler` behind a guard for samplers that cannot stop a row mid-way: refused prompts are
    never sent, and each completion is cut after sampling at its first flagged token (kept, as
    `guarded_sample` keeps it). `inner` is the wrapped sampler (its weights are synced as before)."""

    def __init__(self, inner: Sampler, guard: Guard, pad_id: int):
        self.inner, self.guard, self.pad_id = inner, guard, pad_id

    def sample(self, prompts: list[list[int]], settings: SamplingSettings, seed: int = 0) -> GuardedRollouts:
        tick = time.perf_counter()
        scores, blocked = self.guard.screen(prompts, self.pad_id)
        input_seconds = time.perf_counter() - tick
        allowed = [prompts[i] for i in range(len(prompts)) if not blocked[i]]
        tick = time.perf_counter()
        drawn = self.inner.sample(allowed, settings, seed=seed)
        generate_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        streamed = (replay_scores(self.guard, allowed, drawn.completion_ids, self.pad_id, settings.batch_size)
                    if self.guard.streams else [[] for _ in allowed])
        threshold = self.guard.output_threshold
        halts = [next((t for t, p in enumerate(row) if p >= threshold), None) for row in streamed]
        seconds = {"input": input_seconds, "generate": generate_seconds, "output_scoring": time.perf_counter() - tick}
        return assemble(self.guard, prompts, scores, blocked, drawn, halts, streamed, seconds)
