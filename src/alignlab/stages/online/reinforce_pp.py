"""REINFORCE++ with a group baseline (Hu et al. 2025, "REINFORCE++: Stabilizing Critic-Free Policy
Optimization with Global Advantage Normalization"; OpenRLHF's `reinforce_baseline`).

R_i = r_i − β·KL_i (the sequence KL in the reward, as RLOO), minus the mean R of its prompt's group;
then divided by the standard deviation over the whole batch, not per group: a group whose rewards
barely differ is not blown up (GRPO's per-group std does that). Trained with the clipped REINFORCE
loss on the sequence log-prob, as RLOO. OpenRLHF averages over tokens instead; on the toy test
(rewards of about 0.02, β 0.01) `token_mean` kept the reward flat for 20 iterations while the KL
rose to 1-2 nats, where β 0 raised it to 0.23 (likely: one batch-wide scale gives an iteration
whose rewards barely differ, its differences then mostly the KL term's, the weight of an
informative one). The sequence sum (and mean) raised it with β 0.01.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alignlab.ops.advantages import batch_normalised_group_advantages
from alignlab.stages.online.policy_gradient import (
    Aggregation,
    GroupAlgorithm,
    GroupConfig,
    clipped_loss,
    kl_penalised,
    run_group,
)


class ReinforcePPConfig(GroupConfig):
    beta: float = Field(0.01, ge=0, description="KL coefficient in the reward")
    aggregation: Aggregation = "sequence_sum"


REINFORCE_PP = GroupAlgorithm(
    "reinforce_pp",
    advantages=lambda rewards, seq_kl, cfg: batch_normalised_group_advantages(
        kl_penalised(rewards, seq_kl, cfg.beta), cfg.samples_per_prompt),
    loss=clipped_loss,
)


def run_reinforce_pp(cfg: ReinforcePPConfig, out: Path) -> dict:
    return run_group(cfg, out, REINFORCE_PP)
