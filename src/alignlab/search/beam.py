"""Step-level beam search: grow solutions one step at a time, keeping the best by a step scorer.

Each round, every unfinished beam is expanded into `expansions` sampled next steps; the new
partial solutions are scored (by a PRM, typically) together with the beams that had already
finished, and the best `beam_width` of them survive. A beam finishes when its last step is final
(the expander says so: an answer line, EOS) or at `max_steps`. With `beam_width` B and `expansions` K a round samples
B·K steps, the same number of step-lines as best-of-N with N = B·K samples, which is how the
two are compared (Snell et al. 2024 use this budget accounting too).

The search is written against two callables, so it is tested on toy scorers whose best path is
known and runs unchanged with a language model and a PRM:

- ``expand(prefixes, k) -> list[list[(step, final)]]``: for each prefix (prompt index, steps so
  far), k candidate next steps, each with whether it ends the solution;
- ``score(prefixes) -> list[float]``: one score per (prompt index, steps) partial solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Prefix = tuple[int, tuple[str, ...]]


@dataclass
class Beam:
    steps: tuple[str, ...]
    score: float
    done: bool


@dataclass
class BeamResult:
    """The best beam per prompt and the work spent: expansions asked and rounds run."""

    best: list[Beam]
    final_beams: list[list[Beam]]
    sampled_steps: int = 0
    rounds: int = 0
    history: list[list[list[Beam]]] = field(default_factory=list)


def beam_search(
    num_prompts: int,
    expand: Callable[[list[Prefix], int], list[list[tuple[str, bool]]]],
    score: Callable[[list[Prefix]], list[float]],
    *,
    beam_width: int,
    expansions: int,
    max_steps: int,
    keep_history: bool = False,
) -> BeamResult:
    """Search every prompt's solution at once (one `expand` and one `score` call per round).

    Ranking is by score, ties going to the candidate created first (the order of `expand`'s
    output), so a run is deterministic given deterministic callables. The best beam of a prompt
    is its highest-scoring finished beam, or its highest-scoring beam when none finished.
    """
    for name, value in (("beam_width", beam_width), ("expansions", expansions), ("max_steps", max_steps)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    beams: list[list[Beam]] = [[Beam((), float("-inf"), False)] for _ in range(num_prompts)]
    sampled, rounds, history = 0, 0, []
    for depth in range(max_steps):
        open_prefixes = [(p, b.steps) for p in range(num_prompts) for b in beams[p] if not b.done]
        if not open_prefixes:
            break
        new_steps = expand(open_prefixes, expansions)
        if len(new_steps) != len(open_prefixes):
            raise ValueError(f"expand returned {len(new_steps)} lists for {len(open_prefixes)} prefixes")
        candidates: list[Prefix] = []
        finals: list[bool] = []
        for (p, steps), options in zip(open_prefixes, new_steps):
            candidates += [(p, (*steps, step)) for step, _ in options]
            finals += [final for _, final in options]
        sampled += len(candidates)
        scores = score(candidates) if candidates else []
        if len(scores) != len(candidates):
            raise ValueError(f"score returned {len(scores)} scores for {len(candidates)} candidates")
        pools: list[list[Beam]] = [[b for b in beams[p] if b.done] for p in range(num_prompts)]
        for (p, steps), value, final in zip(candidates, scores, finals):
            done = final or depth + 1 == max_steps
            value = float(value)
            # a NaN score (failed scoring) ranks last instead of breaking the sort
            pools[p].append(Beam(steps, float("-inf") if math.isnan(value) else value, done))
        # sorted() is stable: equal scores keep creation order (finished beams first)
        beams = [sorted(pool, key=lambda b: -b.score)[:beam_width] for pool in pools]
        rounds = depth + 1
        if keep_history:
            history.append(beams)
    return BeamResult([_best(pool) for pool in beams], beams, sampled, rounds, history)


def _best(pool: Sequence[Beam]) -> Beam:
    finished = [b for b in pool if b.done]
    return max(finished or pool, key=lambda b: b.score)


__all__ = ["Beam", "BeamResult", "beam_search"]
