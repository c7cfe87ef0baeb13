"""GRPO (Shao et al. 2024) on the shared group run.

Advantage (r − mean_group)/std_group, shared by every token of a
sample; clipped ratio per token; KL to the reference as a k3 term in the loss (β 0.04 in the
paper). `scale_rewards: false` with `aggregation: token_sum_norm` is Dr. GRPO (Liu et al. 2025):
each token's term divided by the constant batch × `sampling.max_new_tokens`.
`kl_bias_correction: true` weighs the k3 term by π/π_old, as TRL 1.16 does by default: the
penalty's expected gradient is then that of KL(π‖π_ref), the KL that `kl` logs and `max_kl`
bounds, also when samples are reused (update_epochs > 1, several minibatches). The default,
false, is the paper's plain k3, whose expected gradient is that of KL(π_ref‖π) on-policy and of
neither off-policy. It stays the default because the recipes' and README's GRPO figures (and
the TRL benchmark, run with use_bias_correction_kl off) were measured with it; both penalties
vanish at π = π_ref. See `alignlab.losses.policy_gradient.grpo_loss`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alignlab.losses.policy_gradient import grpo_loss
from alignlab.ops.advantages import group_normalised_advantages
from alignlab.stages.online.policy_gradient import Aggregation, GroupAlgorithm, GroupConfig, run_group


class GRPOConfig(GroupConfig):
    beta: float = Field(0.04, ge=0, description="k3 KL coefficient in the loss")
    kl_bias_correction: bool = Field(
        False, description="weigh the k3 term by π/π_old (TRL's default): its expected gradient is then that of "
        "KL(π‖π_ref), on- and off-policy; false: the paper's plain k3 (on-policy the gradient of KL(π_ref‖π))")
    scale_rewards: bool = Field(True, description="divide by the group's std (false: Dr. GRPO)")
    aggregation: Aggregation = "sequence_mean"


GRPO = GroupAlgorithm(
    "grpo",
    advantages=lambda rewards, seq_kl, cfg: group_normalised_advantages(rewards, cfg.samples_per_prompt,
                                                                        scale=cfg.scale_rewards),
    loss=lambda logps, old, b, mask, cfg, max_tokens: grpo_loss(
        logps, old, b.get("ref_logps"), b["advantages"], mask, beta=cfg.beta, clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, aggregation=cfg.aggregation, max_tokens=max_tokens,
        kl_bias_correction=cfg.kl_bias_correction, token_weights=b.get("is_weights")),
)


def run_grpo(cfg: GRPOConfig, out: Path) -> dict:
    return run_group(cfg, out, GRPO)
