"""RLOO (Ahmadian et al. 2024) on the shared group run.

R_i = r_i − β·KL_i (sequence k1 KL in the reward), advantage
R_i − mean of the other k−1 samples' R; REINFORCE on the sequence log-prob (clipped ratio when
the samples are reused for more than one step).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alignlab.ops.advantages import leave_one_out_advantages
from alignlab.stages.online.policy_gradient import (
    Aggregation,
    GroupAlgorithm,
    GroupConfig,
    clipped_loss,
    kl_penalised,
    run_group,
)


class RLOOConfig(GroupConfig):
    beta: float = Field(0.05, ge=0, description="KL coefficient in the reward")
    aggregation: Aggregation = "sequence_sum"


RLOO = GroupAlgorithm(
    "rloo",
    advantages=lambda rewards, seq_kl, cfg: leave_one_out_advantages(kl_penalised(rewards, seq_kl, cfg.beta),
                                                                     cfg.samples_per_prompt),
    loss=clipped_loss,
)


def run_rloo(cfg: RLOOConfig, out: Path) -> dict:
    return run_group(cfg, out, RLOO)
