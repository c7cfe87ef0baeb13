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

from pathlib import Path
from typing import Literal

from pydantic import Field

from alignlab.feedback.rewards import single_reward_model_path
from alignlab.losses.policy_gradient import ppo_loss
from alignlab.models import save_pretrained_atomic
from alignlab.models.value import ValueHead, critic_values, hidden_size, load_critic
from alignlab.ops import masked_mean, masked_sum, masked_whiten
from alignlab.ops.advantages import explained_variance, gae, kl_penalised_rewards
from alignlab.ops.logps import logps_from_logits, token_logps
from alignlab.stages.blocks import AdapterSettings
from alignlab.stages.common import (
    StageConfig,
    file_fingerprint,
    finish,
)
from alignlab.stages.online.common import (
    OnlineConfig,
    OnlineRun,
    batched_logps,
    mismatch_figures,
    rollout_batch,
)
from alignlab.train.distributed import all_reduce_sum
from alignlab.train.kl_control import make_kl_controller
from alignlab.train.online import OnlineSettings, run_online


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


def _policy_forward(policy, head, batch, temperature):
    """Per-token log-probs and (with a shared head) values from one forward of the policy."""
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    if head is None:
        logps, mask = token_logps(policy, ids, attn, mask, temperature)
        return logps, mask, None
    out = policy(input_ids=ids, attention_mask=attn, use_cache=False, output_hidden_states=True)
    logps, mask = logps_from_logits(out.logits, ids, attn, mask, temperature)
    return logps, mask, head(out.hidden_states[-1])


def run(cfg: PPOConfig, out: Path) -> dict:
    job = OnlineRun.start(cfg)
    tokenizer, settings, device, policy = job.tokenizer, job.settings, job.device, job.policy
    reference = job.reference()
    head, critic = None, None
    if cfg.critic == "shared":
        head = ValueHead(hidden_size(policy)).to(device)
    else:
        critic_path = cfg.critic_model or single_reward_model_path(cfg.reward) or cfg.model
        critic = load_critic(critic_path, cfg.dtype, device, pad_token_id=tokenizer.pad_token_id)
    value_module = head if head is not None else critic
    kl_ctl = make_kl_controller(cfg.kl.beta, cfg.kl.target, cfg.kl.horizon)
    temperature, pad = cfg.sampling.temperature, tokenizer.pad_token_id
    micro = settings.micro_batch_size or settings.minibatch_size
    # whitening statistics span every process's samples, as they would in one process
    # (the experience sits on the CPU; nccl reduces on the GPU)
    over_processes = (lambda t: all_reduce_sum(t.to(device), job.dist).to(t.device)) if job.dist.enabled else None

    def values_of(b):
        if head is not None:
            return _policy_forward(policy, head, b, temperature)[2]
        return critic_values(critic, b["input_ids"], b["attention_mask"])

    def collect(iteration: int):
        scored = job.sample(iteration, 1)
        batch = rollout_batch(scored, pad)
        policy.eval()
        old = batched_logps(lambda b: _policy_forward(policy, head, b, temperature)[0], batch, device, micro)
        ref = batched_logps(lambda b: reference.token_logps(b["input_ids"], b["attention_mask"], b["loss_mask"], temperature)[0],
                            batch, device, micro)
        values = batched_logps(values_of, batch, device, micro)
        mask = batch["loss_mask"][:, 1:]
        rewards, kl = kl_penalised_rewards(scored.scores, old, ref, mask, kl_ctl.beta, cfg.kl.estimator)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=over_processes)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask, reduce=over_processes)
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
        return experience, figures

    def loss(b):
        logps, mask, values = _policy_forward(policy, head, b, temperature)
        if values is None:
            values = critic_values(critic, b["input_ids"], b["attention_mask"])
        return ppo_loss(logps, b["old_logps"], b["advantages"], values, b["old_values"], b["returns"], mask,
                        clip=cfg.clip, value_clip=cfg.value_clip, vf_coef=cfg.vf_coef, aggregation="token_mean")

    def after_iteration(iteration: int, figures: dict) -> dict:
        kl_ctl.update(figures["kl"], settings.prompts_per_iteration)
        return {"beta_next": kl_ctl.beta}

    stage = job.online_stage(collect, loss, weight=lambda b: b["loss_mask"][:, 1:].sum(), after_iteration=after_iteration,
                        state={"kl_controller": kl_ctl})
    out.mkdir(parents=True, exist_ok=True)
    result = run_online(policy, stage, settings, out, device=device, expected_samples=settings.prompts_per_iteration,
                        extra_modules={"value": value_module}, data_key=file_fingerprint(cfg.prompts), name="ppo",
                        save_snapshot=lambda d: save_pretrained_atomic(policy, tokenizer, d), dist=job.dist)
    if job.dist.is_main:
        save_pretrained_atomic(policy, tokenizer, out / "model")
        if critic is not None:
            save_pretrained_atomic(critic, tokenizer, out / "critic")
    return finish(out, cfg, {"prompts": len(job.prompt_ids), "final_beta": kl_ctl.beta, **result}, job.dist)
