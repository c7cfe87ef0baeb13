"""Reward sources for online RL (reward model, gold task scorer, user function, rule terms)."""

from alignlab.feedback.rewards.config import (
    CallableTerm,
    GoldTerm,
    LengthPenaltyTerm,
    MissingEOSTerm,
    ProcessRewardTerm,
    RewardModelTerm,
    RewardSpec,
    RewardTerm,
    build_reward,
    parse_reward_spec,
    single_reward_model_path,
)
from alignlab.feedback.rewards.sources import (
    CallableSource,
    GoldSource,
    RewardError,
    RewardModelSource,
    RewardOutputError,
    RewardSource,
    ScoringBatch,
    WeightedSum,
    describe_reward,
)
from alignlab.feedback.rewards.scoring import ScoreResult, score_safely
from alignlab.feedback.rewards.rules import LengthPenalty, MissingEOSPenalty
from alignlab.feedback.rewards.step_scores import ProcessRewardSource, StepScorer

__all__ = [
    "CallableSource",
    "CallableTerm",
    "GoldSource",
    "GoldTerm",
    "LengthPenalty",
    "LengthPenaltyTerm",
    "MissingEOSPenalty",
    "MissingEOSTerm",
    "ProcessRewardSource",
    "ProcessRewardTerm",
    "RewardError",
    "RewardModelSource",
    "RewardModelTerm",
    "RewardOutputError",
    "RewardSource",
    "RewardSpec",
    "RewardTerm",
    "ScoreResult",
    "ScoringBatch",
    "StepScorer",
    "WeightedSum",
    "build_reward",
    "describe_reward",
    "parse_reward_spec",
    "score_safely",
    "single_reward_model_path",
]
