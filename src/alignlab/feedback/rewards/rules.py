"""Rule terms: rewards computed from a completion's shape alone, without any model.

They are meant to be added to a learned or gold reward with `WeightedSum`, to shape what the
policy may do while it chases that reward: a missing-EOS penalty stops it from running every
sample to `max_new_tokens` (one of the "N+ implementation details" of RLHF with PPO), a length
penalty stops it from padding its answers (a well-known way to game a reward model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: rewards.py imports this module at run time
    from alignlab.feedback.rewards.sources import ScoringBatch


class LengthPenalty:
    """−per_token × max(0, length − target_tokens) for each completion; 0 up to the target.

    The length is the number of sampled ids, the EOS included when one was produced: the same
    count that `max_new_tokens` limits, so a target can be read against the sampling budget.
    """

    name = "length_penalty"

    def __init__(self, target_tokens: int, per_token: float):
        if target_tokens < 0:
            raise ValueError(f"target_tokens must be >= 0, got {target_tokens}")
        if per_token < 0:
            raise ValueError(f"per_token must be >= 0 (it is a penalty per extra token), got {per_token}")
        self.target_tokens = int(target_tokens)
        self.per_token = float(per_token)

    def score(self, batch: ScoringBatch) -> list[float]:
        return [-self.per_token * max(0, len(ids) - self.target_tokens) for ids in batch.completion_ids]

    def describe(self) -> str:
        return f"length_penalty(target_tokens={self.target_tokens}, per_token={self.per_token:g})"


class MissingEOSPenalty:
    """`penalty` (default −1) for each completion that did not end with EOS, 0 for the others."""

    name = "missing_eos"

    def __init__(self, penalty: float = -1.0):
        self.penalty = float(penalty)

    def score(self, batch: ScoringBatch) -> list[float]:
        return [0.0 if finished else self.penalty for finished in batch.finished]

    def describe(self) -> str:
        return f"missing_eos(penalty={self.penalty:g})"
