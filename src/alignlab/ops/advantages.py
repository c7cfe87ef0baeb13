"""Rewards and advantages for online RL on language models.

Per-token tensors are `[B, T]` with a response mask `[B, T]` (non-zero = a response token; bool,
int or float). Sequence tensors are `[B]`. Every function is a pure tensor function (no `.item()`,
no Python branching on tensor values), so none of them forces a host-device sync.

- PPO-RLHF (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"; Ouyang et
  al. 2022): per-token reward −β·KL_t plus the reward model's score on the last response token,
  then GAE (Schulman et al. 2016) over the response tokens.
- RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
  Learning from Human Feedback in LLMs"): the mean of the other k − 1 samples as the baseline.
- GRPO (Shao et al. 2024, "DeepSeekMath"): reward standardised within the group of k samples;
  Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training") drops the std division.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.ops.stats import kl_estimate, masked_var, masked_whiten


def _keep(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _zero(like: Tensor) -> Tensor:
    return torch.zeros((), dtype=like.dtype, device=like.device)


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over each row's masked tokens: (advantages, returns).

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation", eq. 16, run backwards over the response tokens of a row:

        δ_t = r_t + γ·V(next) − V_t
        A_t = δ_t + γλ·A(next)

    where "next" is the next *masked* token of the row: positions outside the mask are skipped
    (prompt tokens before the response, padding after it, or any hole in between), and after
    the last response token the episode has ended, so V(next) = A(next) = 0. returns = A + V
    (the value targets, TD(λ) returns). Positions outside the mask get advantage 0 and return 0.

    rewards, values: `[B, T]`. The defaults γ = 1, λ = 0.95 are the PPO-RLHF ones. Both outputs
    are computed from detached inputs: they are targets of the losses, and a gradient through
    `returns` into the value head would make the value loss wrong.
    """
    keep = _keep(mask).expand_as(rewards)
    rewards, values = rewards.detach(), values.detach()
    zero = _zero(rewards)
    next_value = torch.zeros_like(rewards[..., 0])
    next_advantage = torch.zeros_like(rewards[..., 0])
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[-1])):
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        advantage = delta + gamma * lam * next_advantage
        kept = keep[..., t]
        advantages[..., t] = torch.where(kept, advantage, zero)
        # A skipped position leaves the carried "next" untouched, so the recursion jumps over it.
        next_value = torch.where(kept, values[..., t], next_value)
        next_advantage = torch.where(kept, advantage, next_advantage)
    returns = torch.where(keep, advantages + values, zero)
    return advantages, returns


def last_token_mask(mask: Tensor) -> Tensor:
    """Bool `[B, T]`: True on each row's last masked token (a row with no masked token has none)."""
    keep = _keep(mask)
    kept_from_here_on = keep.flip(-1).cumsum(-1).flip(-1)
    return keep & (kept_from_here_on == 1)


def kl_penalised_rewards(
    scores: Tensor,
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    beta: float | Tensor,
    estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token rewards of PPO-RLHF; returns (token_rewards `[B, T]`, kl `[B, T]`).

    Ziegler et al. 2019, eq. 2 (and Stiennon et al. 2020, Ouyang et al. 2022): the reward of a
    response is its score minus β·KL(π‖π_ref); the KL part is paid per token,

        token_reward_t = −β·KL_t                 (+ score on the row's last masked token)

    with KL_t estimated from the sampled tokens' log-probs by `estimator` ("k1" = log π − log
    π_ref as in the paper, or "k2"/"k3", see `alignlab.ops.stats`). scores: `[B]` (e.g. the
    reward model's output); beta: a float or a 0-dim tensor (an adaptive controller's value).
    Both outputs are 0 outside the mask. Nothing is detached: call it under `torch.no_grad()`
    when the rewards are built, as they are constants of the policy update.
    """
    keep = _keep(mask).expand_as(logps)
    zero = _zero(logps)
    kl = torch.where(keep, kl_estimate(logps, ref_logps, estimator), zero)
    score_here = torch.where(last_token_mask(keep), scores.unsqueeze(-1).to(logps.dtype), zero)
    token_rewards = torch.where(keep, -beta * kl + score_here, zero)
    return token_rewards, kl


def whiten_advantages(advantages: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Standardise advantages over the masked tokens of the batch (0 outside the mask).

    `masked_whiten` under the name PPO uses it for: advantages are whitened with the mean removed
    (shift_mean=True); rewards, when whitened, keep their mean (shift_mean=False), see Huang et
    al. 2024, "The N+ Implementation Details of RLHF with PPO".
    """
    return masked_whiten(advantages, mask, shift_mean=shift_mean)


def _groups(rewards: Tensor, k: int) -> Tensor:
    """rewards `[B]` as `[B/k, k]`: consecutive blocks of k samples of the same prompt."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k (samples per prompt) must be an integer >= 2, got {k!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a [B] tensor, got shape {tuple(rewards.shape)}")
    if rewards.shape[0] % k != 0:
        raise ValueError(
            f"batch of {rewards.shape[0]} rewards is not divisible into groups of k={k} "
            "(rows must be consecutive blocks of k samples of the same prompt)"
        )
    return rewards.view(-1, k)


def leave_one_out_advantages(rewards: Tensor, k: int) -> Tensor:
    """RLOO advantages `[B]`: A_i = r_i − mean_{j≠i} r_j within each group of k samples.

    Ahmadian et al. 2024, eq. 8 (the baseline of Kool et al. 2019). Rows are grouped as
    consecutive blocks of k samples of the same prompt; B must be divisible by k and k >= 2.
    The advantages of a group sum to 0. For PPO-style RLOO pass r_i = score_i − β·Σ_t KL_t.
    """
    groups = _groups(rewards, k)
    others_mean = (groups.sum(-1, keepdim=True) - groups) / (k - 1)
    return (groups - others_mean).reshape(-1)


def group_normalised_advantages(
    rewards: Tensor, k: int, scale: bool = True, eps: float = 1e-4
) -> Tensor:
    """GRPO advantages `[B]`: (r_i − mean_group)/(std_group + eps), one value per sample.

    Shao et al. 2024, §4.1.2 (outcome supervision). std is the unbiased (Bessel-corrected) one,
    like `torch.std`. scale=False gives Dr. GRPO's r_i − mean_group (Liu et al. 2025), which does
    not up-weight groups whose rewards barely differ. A group of equal rewards gets 0, not NaN.
    Same grouping as `leave_one_out_advantages`: consecutive blocks of k samples per prompt.
    """
    groups = _groups(rewards, k)
    centred = groups - groups.mean(-1, keepdim=True)
    if scale:
        centred = centred / (groups.std(-1, keepdim=True) + eps)
    return centred.reshape(-1)


def batch_normalised_group_advantages(rewards: Tensor, k: int, eps: float = 1e-8) -> Tensor:
    """REINFORCE++-baseline advantages `[B]`: r_i − mean_group, divided by the std over the whole
    batch (Hu et al. 2025): the group mean removes the prompt's difficulty, and one global scale
    does not blow up a group whose rewards barely differ. Under torchrun the batch is this
    process's share. A batch of equal rewards gets 0."""
    centred = group_normalised_advantages(rewards, k, scale=False)
    if centred.numel() < 2:
        return centred
    return centred / (centred.std() + eps)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 − Var[returns − values]/Var[returns] over the masked tokens (a detached metric).

    1 = the value head predicts the returns exactly, 0 = no better than their mean, < 0 = worse.
    NaN when the returns have no variance (the ratio is undefined), as in CleanRL's PPO.
    """
    values, returns = values.detach(), returns.detach()
    var_returns = masked_var(returns, mask)
    ratio = masked_var(returns - values, mask) / var_returns
    nan = torch.full((), float("nan"), dtype=ratio.dtype, device=ratio.device)
    return torch.where(var_returns > 0, 1 - ratio, nan)


__all__ = [
    "batch_normalised_group_advantages",
    "explained_variance",
    "gae",
    "group_normalised_advantages",
    "kl_penalised_rewards",
    "last_token_mask",
    "leave_one_out_advantages",
    "whiten_advantages",
]
