"""Critic-free policy gradient with k samples per prompt: GRPO and RLOO.

- GRPO (Shao et al. 2024): advantage (r − mean_group)/std_group, shared by every token of a
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
- RLOO (Ahmadian et al. 2024): R_i = r_i − β·KL_i (sequence k1 KL in the reward), advantage
  R_i − mean of the other k−1 samples' R; REINFORCE on the sequence log-prob (clipped ratio when
  the samples are reused for more than one step).

When every iteration makes exactly one optimizer step on fresh samples (`update_epochs` 1 and
`minibatch_size` ≥ the samples of an iteration) the old log-probs equal the current ones, so
their extra forward pass is skipped and the ratio is computed against the detached log-probs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from alignlab.losses.policy_gradient import AGGREGATIONS, clipped_policy_loss, grpo_loss
from alignlab.models import save_pretrained_atomic
from alignlab.ops import masked_mean, masked_sum
from alignlab.ops.advantages import (
    group_normalised_advantages,
    leave_one_out_advantages,
)
from alignlab.ops.logps import token_logps
from alignlab.stages.blocks import AdapterSettings
from alignlab.stages.common import (
    file_fingerprint,
    finish,
)
from alignlab.stages.online_common import (
    OnlineConfig,
    OnlineRun,
    batched_logps,
    mismatch_figures,
    rollout_batch,
)
from alignlab.train.online import run_online

Aggregation = Literal[AGGREGATIONS]


class GroupConfig(OnlineConfig, AdapterSettings):
    samples_per_prompt: int = Field(4, ge=2, description="group size k")
    clip_low: float = Field(0.2, gt=0)
    clip_high: float | None = Field(None, gt=0, description="default: clip_low (DAPO raises it)")
    track_kl: bool = Field(True, description="measure KL to the reference even when beta is 0")


class GRPOConfig(GroupConfig):
    beta: float = Field(0.04, ge=0, description="k3 KL coefficient in the loss")
    kl_bias_correction: bool = Field(
        False, description="weigh the k3 term by π/π_old (TRL's default): its expected gradient is then that of "
        "KL(π‖π_ref), on- and off-policy; false: the paper's plain k3 (on-policy the gradient of KL(π_ref‖π))")
    scale_rewards: bool = Field(True, description="divide by the group's std (false: Dr. GRPO)")
    aggregation: Aggregation = "sequence_mean"


class RLOOConfig(GroupConfig):
    beta: float = Field(0.05, ge=0, description="KL coefficient in the reward")
    aggregation: Aggregation = "sequence_sum"


def run_group(cfg: GroupConfig, out: Path, algorithm: str) -> dict:
    job = OnlineRun.start(cfg)
    tokenizer, settings, device, policy = job.tokenizer, job.settings, job.device, job.policy
    need_ref = cfg.beta > 0 or cfg.track_kl or settings.max_kl is not None
    reference = job.reference() if need_ref else None
    k, temperature, pad = cfg.samples_per_prompt, cfg.sampling.temperature, tokenizer.pad_token_id
    samples = settings.prompts_per_iteration * k
    on_policy = settings.update_epochs == 1 and settings.minibatch_size >= samples
    micro = settings.micro_batch_size or settings.minibatch_size
    max_tokens = cfg.sampling.max_new_tokens  # token_sum_norm's constant (Dr. GRPO), never the padded width

    def logps_of(model_fn):
        return lambda b: model_fn(b["input_ids"], b["attention_mask"], b["loss_mask"], temperature)[0]

    def collect(iteration: int):
        scored = job.sample(iteration, k)
        batch = rollout_batch(scored, pad)
        mask = batch["loss_mask"][:, 1:]
        figures = {"reward": float(scored.scores.mean()), **scored.figures}
        experience = {key: batch[key] for key in ("input_ids", "attention_mask", "loss_mask")}
        policy.eval()
        old = None if on_policy else batched_logps(logps_of(lambda *a: token_logps(policy, *a)), batch, device, micro)
        current = old if old is not None else batch["sampler_logps"]
        if reference is not None:
            ref = batched_logps(logps_of(reference.token_logps), batch, device, micro)
            seq_kl = masked_sum(current - ref, mask, dim=-1)
            figures["kl"] = float(seq_kl.mean())
            if cfg.beta > 0:
                experience["ref_logps"] = ref
        rewards = scored.scores
        if algorithm == "rloo":
            rewards = rewards - cfg.beta * seq_kl if cfg.beta > 0 else rewards
            experience["advantages"] = leave_one_out_advantages(rewards, k)
        else:
            experience["advantages"] = group_normalised_advantages(rewards, k, scale=cfg.scale_rewards)
        if old is not None:
            experience["old_logps"] = old
            figures.update(mismatch_figures(batch["sampler_logps"], old, mask))
        figures["entropy"] = float(-masked_mean(current, mask))  # per-token estimate from the sampled tokens
        figures["reward_std_in_group"] = float(scored.scores.view(-1, k).std(dim=1).mean()) if len(scored.scores) else 0.0
        return experience, figures

    def loss(b):
        logps, mask = token_logps(policy, b["input_ids"], b["attention_mask"], b["loss_mask"], temperature)
        old = b.get("old_logps", logps.detach())
        if algorithm == "grpo":
            return grpo_loss(logps, old, b.get("ref_logps"), b["advantages"], mask, beta=cfg.beta,
                             clip_low=cfg.clip_low, clip_high=cfg.clip_high, aggregation=cfg.aggregation,
                             max_tokens=max_tokens, kl_bias_correction=cfg.kl_bias_correction)
        return clipped_policy_loss(logps, old, b["advantages"], mask, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                                   aggregation=cfg.aggregation, max_tokens=max_tokens)

    # each micro-batch's mean loss weighs by the units its aggregation averages over
    stage = job.online_stage(collect, loss, weight=(lambda b: b["loss_mask"][:, 1:].sum()) if cfg.aggregation == "token_mean" else (
        lambda b: torch.tensor(float(b["input_ids"].shape[0]))))
    out.mkdir(parents=True, exist_ok=True)
    result = run_online(policy, stage, settings, out, device=device, expected_samples=samples,
                        data_key=file_fingerprint(cfg.prompts), name=algorithm,
                        save_snapshot=lambda d: save_pretrained_atomic(policy, tokenizer, d), dist=job.dist)
    if job.dist.is_main:
        save_pretrained_atomic(policy, tokenizer, out / "model")
    return finish(out, cfg, {"prompts": len(job.prompt_ids), "samples_per_iteration": samples, **result}, job.dist)


def run_grpo(cfg: GRPOConfig, out: Path) -> dict:
    return run_group(cfg, out, "grpo")


def run_rloo(cfg: RLOOConfig, out: Path) -> dict:
    return run_group(cfg, out, "rloo")
