"""PPO for RLHF (Ziegler et al. 2019; Ouyang et al. 2022), with the details of Huang et al. 2024.

Each iteration: sample one response per prompt from the policy; score it with the reward source;
per-token reward = −β·KL_t(policy ‖ reference), plus the score on the last token; GAE (γ, λ) on a
value function; then `update_epochs` passes of clipped policy and value losses over minibatches.
β is fixed or follows the adaptive controller (target KL per sequence, horizon).

Critic: `separate` (a token-level value model, by default initialised from the reward model when
the reward is one reward model, else from the policy) or `shared` (a scalar head on the policy's
trunk; with LoRA the reference is the adapter switched off, so a single model sits in memory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from alignlab.feedback.rewards import single_reward_model_path
from alignlab.losses.policy_gradient import ppo_loss
from alignlab.models import save_pretrained_atomic
from alignlab.models.value import ValueHead, critic_values, hidden_size, load_critic
from alignlab.ops import masked_mean, masked_sum, masked_whiten
from alignlab.ops.advantages import explained_variance, gae, kl_penalised_rewards
from alignlab.ops.logps import logps_from_logits, token_logps
from alignlab.stages.blocks import AdapterSettings
from alignlab.stages.common import StageConfig, file_fingerprint, finish, save_trained_model
from alignlab.stages.online.common import (
    OnlineConfig,
    OnlineRun,
    RolloutCorrection,
    batched_logps,
    mismatch_figures,
    rollout_batch,
)
from alignlab.train.distributed import all_reduce_sum
from alignlab.train.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller
from alignlab.train.online import Experience, OnlineSettings, run_online
from alignlab.train.sharding import is_sharded


class KLSettings(StageConfig):
    beta: float = Field(0.05, ge=0, description="KL coefficient (the start value when adaptive)")
    target: float | None = Field(None, gt=0, description="adaptive control towards this KL per sequence (nats)")
    horizon: int = Field(10_000, gt=0)
    estimator: Literal["k1", "k3"] = "k1"


class PPOConfig(OnlineConfig, AdapterSettings):
    critic: Literal["separate", "shared"] = "separate"
    critic_model: str | None = Field(None, description="initialises a separate critic; default: the reward model, else the policy")
    kl: KLSettings = KLSettings()
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    clip: float = Field(0.2, gt=0)
    value_clip: float | None = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    train: OnlineSettings = OnlineSettings(update_epochs=4)  # PPO reuses each rollout for 4 epochs
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    rollout_correction: RolloutCorrection | None = Field(
        None, description="weight each token's policy loss by π_old/π_sampler, bounded, against the sampler/trainer "
        "log-prob mismatch (PPO's π_old is always the trainer's own forward)")


def _policy_forward(policy, head, batch, temperature):
    """Per-token log-probs and (with a shared head) values from one forward of the policy."""
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    if head is None:
        logps, mask = token_logps(policy, ids, attn, mask, temperature)
        return logps, mask, None
    out = policy(input_ids=ids, attention_mask=attn, use_cache=False, output_hidden_states=True)
    logps, mask = logps_from_logits(out.logits, ids, attn, mask, temperature)
    return logps, mask, head(out.hidden_states[-1])


@dataclass(frozen=True)
class _Models:
    """The models of a PPO run: the policy, its frozen reference and the critic, which is either a
    value head on the policy's trunk (`shared`) or a separate value model: exactly one is set."""

    policy: torch.nn.Module
    reference: object
    head: ValueHead | None
    critic: torch.nn.Module | None

    @property
    def value_module(self) -> torch.nn.Module:
        return self.head if self.head is not None else self.critic

    def values(self, batch: Experience, temperature: float) -> Tensor:
        """The critic's per-token values of a micro-batch."""
        if self.head is not None:
            return _policy_forward(self.policy, self.head, batch, temperature)[2]
        return critic_values(self.critic, batch["input_ids"], batch["attention_mask"])


def _load_models(cfg: PPOConfig, job: OnlineRun) -> _Models:
    """The reference, then the critic: a fresh value head (shared) or a value model loaded from
    `critic_model`, else the reward model when the reward is one, else the policy's model."""
    reference = job.reference()
    head, critic = None, None
    if cfg.critic == "shared":
        head = ValueHead(hidden_size(job.policy)).to(job.device)
    else:
        critic_path = cfg.critic_model or single_reward_model_path(cfg.reward) or cfg.model
        critic = load_critic(critic_path, cfg.dtype, job.device, pad_token_id=job.tokenizer.pad_token_id)
    return _Models(job.policy, reference, head, critic)


def _advantages(cfg: PPOConfig, rewards: Tensor, values: Tensor, mask: Tensor,
                over_processes: Callable | None) -> tuple[Tensor, Tensor]:
    """GAE advantages and returns, with the rewards and the advantages whitened as configured."""
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=over_processes)
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask, reduce=over_processes)
    return advantages, returns


def _collect_fn(cfg: PPOConfig, job: OnlineRun, models: _Models,
                kl_ctl: FixedKLController | AdaptiveKLController) -> Callable[[int], tuple[Experience, dict]]:
    """One iteration's experience: a sample per prompt, its old and reference log-probs, values,
    KL-penalised rewards and GAE advantages, with the iteration's figures."""
    device, temperature, pad = job.device, cfg.sampling.temperature, job.tokenizer.pad_token_id
    micro = job.settings.micro_batch_size or job.settings.minibatch_size
    policy, head, reference = models.policy, models.head, models.reference
    # whitening statistics span every process's samples, as they would in one process
    # (the experience sits on the CPU; nccl reduces on the GPU)
    over_processes = (lambda t: all_reduce_sum(t.to(device), job.dist).to(t.device)) if job.dist.enabled else None

    def collect(iteration: int):
        scored = job.sample(iteration, 1)
        batch = rollout_batch(scored, pad)
        policy.eval()
        in_step = job.dist if is_sharded(policy) else None  # a sharded policy's forwards are collectives
        old = batched_logps(lambda b: _policy_forward(policy, head, b, temperature)[0], batch, device, micro,
                            in_step_with=in_step)
        ref = batched_logps(lambda b: reference.token_logps(b["input_ids"], b["attention_mask"], b["loss_mask"], temperature)[0],
                            batch, device, micro, in_step_with=in_step)
        values = batched_logps(lambda b: models.values(b, temperature), batch, device, micro, in_step_with=in_step)
        mask = batch["loss_mask"][:, 1:]
        rewards, kl = kl_penalised_rewards(scored.scores, old, ref, mask, kl_ctl.beta, cfg.kl.estimator)
        advantages, returns = _advantages(cfg, rewards, values, mask, over_processes)
        seq_kl = masked_sum(old - ref, mask, dim=-1)
        figures = {
            "reward": float(scored.scores.mean()), "kl": float(seq_kl.mean()), "beta": kl_ctl.beta,
            "non_score_reward": float(-kl_ctl.beta * masked_sum(kl, mask, dim=-1).mean()),
            "entropy": float(-masked_mean(old, mask)),  # per-token estimate from the sampled tokens
            "value/explained_variance": float(explained_variance(values, returns, mask)),
            **scored.figures, **mismatch_figures(batch["sampler_logps"], old, mask),
        }
        experience = {**{k: batch[k] for k in ("input_ids", "attention_mask", "loss_mask")},
                      "old_logps": old, "old_values": values, "advantages": advantages, "returns": returns}
        if cfg.rollout_correction is not None:
            experience["is_weights"], is_figures = cfg.rollout_correction.weights(old, batch["sampler_logps"], mask)
            figures.update(is_figures)
        return experience, figures

    return collect


def _loss_fn(cfg: PPOConfig, models: _Models) -> Callable[[Experience], tuple[Tensor, dict]]:
    """The clipped policy and value losses of a micro-batch of experience."""
    temperature = cfg.sampling.temperature

    def loss(b):
        logps, mask, values = _policy_forward(models.policy, models.head, b, temperature)
        if values is None:
            values = critic_values(models.critic, b["input_ids"], b["attention_mask"])
        return ppo_loss(logps, b["old_logps"], b["advantages"], values, b["old_values"], b["returns"], mask,
                        clip=cfg.clip, value_clip=cfg.value_clip, vf_coef=cfg.vf_coef, aggregation="token_mean",
                        token_weights=b.get("is_weights"))

    return loss


def run(cfg: PPOConfig, out: Path) -> dict:
    job = OnlineRun.start(cfg)
    tokenizer, settings, device, policy = job.tokenizer, job.settings, job.device, job.policy
    models = _load_models(cfg, job)
    kl_ctl = make_kl_controller(cfg.kl.beta, cfg.kl.target, cfg.kl.horizon)

    def after_iteration(iteration: int, figures: dict) -> dict:
        kl_ctl.update(figures["kl"], settings.prompts_per_iteration)
        return {"beta_next": kl_ctl.beta}

    stage = job.online_stage(_collect_fn(cfg, job, models, kl_ctl), _loss_fn(cfg, models),
                             weight=lambda b: b["loss_mask"][:, 1:].sum(), after_iteration=after_iteration,
                             state={"kl_controller": kl_ctl})
    out.mkdir(parents=True, exist_ok=True)
    result = run_online(policy, stage, settings, out, device=device, expected_samples=settings.prompts_per_iteration,
                        extra_modules={"value": models.value_module}, data_key=file_fingerprint(cfg.prompts),
                        name="ppo",
                        save_snapshot=lambda d: save_trained_model(policy, tokenizer, d, job.dist), dist=job.dist)
    save_trained_model(policy, tokenizer, out / "model", job.dist)
    if job.dist.is_main and models.critic is not None:
        save_pretrained_atomic(models.critic, tokenizer, out / "critic")
    return finish(out, cfg, {"prompts": len(job.prompt_ids), "final_beta": kl_ctl.beta, **result}, job.dist)
