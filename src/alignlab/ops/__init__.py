"""Tensor operations shared by every objective: log-probs, masked statistics, KL estimators."""

from alignlab.ops.logps import sequence_logps, token_logps
from alignlab.ops.selective import selective_log_softmax
from alignlab.ops.stats import (
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    pairwise_accuracy,
    reduce_loss,
)

__all__ = [
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "pairwise_accuracy",
    "reduce_loss",
    "selective_log_softmax",
    "sequence_logps",
    "token_logps",
]
