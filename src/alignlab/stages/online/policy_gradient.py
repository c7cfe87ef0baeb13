"""Critic-free policy gradient with k samples per prompt, shared by GRPO, RLOO and REINFORCE++.

Each iteration samples k responses per prompt, scores them, measures each sample's KL to the
reference, and hands the rewards to the algorithm (`GroupAlgorithm`), which turns them into
per-sample advantages and says which loss trains on them. The algorithms are one short file each:
`grpo.py`, `rloo.py`, `reinforce_pp.py`.

When every iteration makes exactly one optimizer step on fresh samples (`update_epochs` 1 and
`minibatch_size` ≥ the samples of an iteration) the old log-probs equal the current ones, so
their extra forward pass is skipped and the ratio is computed against the detached log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import Field
from torch import Tensor

from alignlab.losses.policy_gradient import AGGREGATIONS, clipped_policy_loss
from alignlab.ops import masked_mean, masked_sum
from alignlab.ops.logps import token_logps
from alignlab.stages.blocks import AdapterSettings
from alignlab.stages.common import (
    file_fingerprint,
    finish,
    save_trained_model,
)
from alignlab.stages.online.common import (
    OnlineConfig,
    OnlineRun,
    RolloutCorrection,
    batched_logps,
    mismatch_figures,
    rollout_batch,
)
from alignlab.train.online import run_online
from alignlab.train.sharding import is_sharded

Aggregation = Literal[AGGREGATIONS]


class GroupConfig(OnlineConfig, AdapterSettings):
    samples_per_prompt: int = Field(4, ge=2, description="group size k")
    rollout_correction: RolloutCorrection | None = Field(
        None, description="correct the sampler/trainer log-prob mismatch with bounded importance weights "
        "(costs one trainer forward over the samples when the update is on-policy)")
    clip_low: float = Field(0.2, gt=0)
    clip_high: float | None = Field(None, gt=0, description="default: clip_low (DAPO raises it)")
    track_kl: bool = Field(True, description="measure KL to the reference even when beta is 0")


@dataclass(frozen=True)
class GroupAlgorithm:
    """What one critic-free algorithm adds to the shared group run."""

    name: str
    advantages: Callable[[Tensor, Tensor | None, GroupConfig], Tensor]
    """(rewards [N], sequence KL to the reference [N] or None, config) -> advantages [N]"""
    loss: Callable[[Tensor, Tensor, dict[str, Tensor], Tensor, GroupConfig, int], tuple[Tensor, dict[str, Tensor]]]
    """(log-probs, old log-probs, micro-batch, mask, config, max_tokens) -> (loss, metrics)"""


def kl_penalised(rewards: Tensor, seq_kl: Tensor | None, beta: float) -> Tensor:
    """R_i = r_i − β·KL_i, the sequence KL in the reward (RLOO, REINFORCE++)."""
    return rewards - beta * seq_kl if beta > 0 else rewards


def clipped_loss(logps, old, b, mask, cfg: GroupConfig, max_tokens: int):
    """REINFORCE on the sample's advantage with PPO's clipped ratio (exact when samples are fresh)."""
    return clipped_policy_loss(logps, old, b["advantages"], mask, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                               aggregation=cfg.aggregation, max_tokens=max_tokens, token_weights=b.get("is_weights"))


def run_group(cfg: GroupConfig, out: Path, algorithm: GroupAlgorithm) -> dict:
    job = OnlineRun.start(cfg)
    tokenizer, settings, device, policy = job.tokenizer, job.settings, job.device, job.policy
    need_ref = cfg.beta > 0 or cfg.track_kl or settings.max_kl is not None
    reference = job.reference() if need_ref else None
    k, temperature, pad = cfg.samples_per_prompt, cfg.sampling.temperature, tokenizer.pad_token_id
    samples = settings.prompts_per_iteration * k
    # fresh samples need no trainer log-probs, unless they correct the sampler's
    on_policy = settings.update_epochs == 1 and settings.minibatch_size >= samples and cfg.rollout_correction is None
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
        in_step = job.dist if is_sharded(policy) else None  # sharded (by now): forwards are collectives
        old = None if on_policy else batched_logps(logps_of(lambda *a: token_logps(policy, *a)), batch, device, micro,
                                                   in_step_with=in_step)
        current = old if old is not None else batch["sampler_logps"]
        if reference is not None:
            ref = batched_logps(logps_of(reference.token_logps), batch, device, micro, in_step_with=in_step)
            seq_kl = masked_sum(current - ref, mask, dim=-1)
            figures["kl"] = float(seq_kl.mean())
            if cfg.beta > 0:
                experience["ref_logps"] = ref
        experience["advantages"] = algorithm.advantages(scored.scores, seq_kl if reference is not None else None, cfg)
        if old is not None:
            experience["old_logps"] = old
            figures.update(mismatch_figures(batch["sampler_logps"], old, mask))
        if cfg.rollout_correction is not None:
            experience["is_weights"], is_figures = cfg.rollout_correction.weights(old, batch["sampler_logps"], mask)
            figures.update(is_figures)
        figures["entropy"] = float(-masked_mean(current, mask))  # per-token estimate from the sampled tokens
        figures["reward_std_in_group"] = float(scored.scores.view(-1, k).std(dim=1).mean()) if len(scored.scores) else 0.0
        return experience, figures

    def loss(b):
        logps, mask = token_logps(policy, b["input_ids"], b["attention_mask"], b["loss_mask"], temperature)
        return algorithm.loss(logps, b.get("old_logps", logps.detach()), b, mask, cfg, max_tokens)

    # each micro-batch's mean loss weighs by the units its aggregation averages over
    stage = job.online_stage(collect, loss, weight=(lambda b: b["loss_mask"][:, 1:].sum()) if cfg.aggregation == "token_mean" else (
        lambda b: torch.tensor(float(b["input_ids"].shape[0]))))
    out.mkdir(parents=True, exist_ok=True)
    result = run_online(policy, stage, settings, out, device=device, expected_samples=samples,
                        data_key=file_fingerprint(cfg.prompts), name=algorithm.name,
                        save_snapshot=lambda d: save_trained_model(policy, tokenizer, d, job.dist), dist=job.dist)
    save_trained_model(policy, tokenizer, out / "model", job.dist)
    return finish(out, cfg, {"prompts": len(job.prompt_ids), "samples_per_iteration": samples, **result}, job.dist)
