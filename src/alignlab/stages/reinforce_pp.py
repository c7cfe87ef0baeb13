"""REINFORCE++ with a group baseline (Hu et al. 2025, "REINFORCE++: Stabilizing Critic-Free Policy
Optimization with Global Advantage Normalization"; OpenRLHF's `reinforce_baseline`).

R_i = r_i − β·KL_i (the sequence KL in the reward, as RLOO), minus the mean R of its prompt's group;
then divided by the standard deviation over the whole batch, not per group: a group whose rewards
barely differ is not blown up (GRPO's per-group std does that). Trained with the clipped REINFORCE
loss on the sequence log-prob, as RLOO (OpenRLHF averages over tokens; on the toy test that
`token_mean` did not raise the reward in 20 iterations where the sequence sum does).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alignlab.ops.advantages import batch_normalised_group_advantages
from alignlab.stages.policy_gradient import Aggregation, GroupAlgorithm, GroupConfig, run_group
from alignlab.stages.rloo import clipped_loss, kl_penalised


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
