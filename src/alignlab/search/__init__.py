"""Test-time search over sampled solutions: majority vote, best-of-N by a scorer, PRM beam search."""

from alignlab.search.beam import Beam, BeamResult, beam_search
from alignlab.search.select import pick_best
from alignlab.search.step_sampler import SampledStep, StepSampler, newline_token_ids
from alignlab.feedback.rewards.step_scores import AGGREGATIONS, StepScorer, aggregate
from alignlab.search.vote import majority_vote, weighted_vote

__all__ = [
    "AGGREGATIONS", "Beam", "BeamResult", "SampledStep", "StepSampler", "StepScorer", "aggregate",
    "beam_search", "majority_vote", "newline_token_ids", "pick_best", "weighted_vote",
]
