"""Online-RL math against hand computations: GAE, KL-penalised rewards, RLOO/GRPO advantages,
PPO/GRPO/REINFORCE losses (values and gradients) and the KL controllers."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses.policy_gradient import (
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    grpo_loss,
    ppo_loss,
    reinforce_loss,
)
from alignlab.ops.advantages import (
    explained_variance,
    gae,
    group_normalised_advantages,
    kl_penalised_rewards,
    leave_one_out_advantages,
    whiten_advantages,
)
from alignlab.train.kl_control import (
    AdaptiveKLController,
    FixedKLController,
    make_kl_controller,
)


def t(values, **kw) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, **kw)


def close(got, expected, tol=1e-10):
    torch.testing.assert_close(got, t(expected) if not torch.is_tensor(expected) else expected,
                               rtol=0, atol=tol)


# --- GAE ----------------------------------------------------------------------------------------

# r = [1, 0.5, 2], V = [0.3, 0.6, 0.4], γ = 0.9, λ = 0.8, by hand (V after the last token = 0):
#   δ2 = 2 − 0.4 = 1.6                      A2 = 1.6
#   δ1 = 0.5 + 0.9·0.4 − 0.6 = 0.26         A1 = 0.26 + 0.72·1.6   = 1.412
#   δ0 = 1 + 0.9·0.6 − 0.3 = 1.24           A0 = 1.24 + 0.72·1.412 = 2.25664
HAND_ADV = [2.25664, 1.412, 1.6]
HAND_RET = [2.25664 + 0.3, 1.412 + 0.6, 1.6 + 0.4]


def test_gae_one_row_by_hand():
    adv, ret = gae(t([[1.0, 0.5, 2.0]]), t([[0.3, 0.6, 0.4]]), t([[1, 1, 1]]), gamma=0.9, lam=0.8)
    close(adv, [HAND_ADV])
    close(ret, [HAND_RET])


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_gae_skips_padding_prompt_tokens_and_holes(mask_dtype):
    nan = float("nan")
    # row 0: padding after the end (garbage, even NaN, in the padded slots)
    # row 1: prompt tokens masked before the response
    # row 2: a masked hole inside the response (e.g. a tool output) is jumped over
    rewards = t([[1.0, 0.5, 2.0, 7.0, nan], [9.0, -4.0, 1.0, 0.5, 2.0], [1.0, 5.0, 0.5, 2.0, 3.0]])
    values = t([[0.3, 0.6, 0.4, nan, 5.0], [8.0, 2.0, 0.3, 0.6, 0.4], [0.3, -9.0, 0.6, 0.4, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 1, 0]]).to(mask_dtype)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    a0, a1, a2 = HAND_ADV
    r0, r1, r2 = HAND_RET
    close(adv, [[a0, a1, a2, 0, 0], [0, 0, a0, a1, a2], [a0, 0, a1, a2, 0]])
    close(ret, [[r0, r1, r2, 0, 0], [0, 0, r0, r1, r2], [r0, 0, r1, r2, 0]])


def _python_gae(r, v, gamma, lam):
    adv, next_v, next_a = [0.0] * len(r), 0.0, 0.0
    for i in reversed(range(len(r))):
        next_a = r[i] + gamma * next_v - v[i] + gamma * lam * next_a
        adv[i], next_v = next_a, v[i]
    return adv


def test_gae_limits_reward_to_go_and_one_step_td():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    values = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    lengths = [6, 4, 1]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    # λ = γ = 1: returns are the plain reward-to-go (the values cancel)
    _, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    for b, n in enumerate(lengths):
        r = rewards[b].tolist()
        expected = [sum(r[i:n]) for i in range(n)] + [0.0] * (6 - n)
        close(ret[b], expected)
    # λ = 0: one-step TD errors, with V = 0 after the last token
    adv, _ = gae(rewards, values, mask, gamma=0.7, lam=0.0)
    for b, n in enumerate(lengths):
        r, v = rewards[b].tolist(), values[b].tolist() + [0.0]
        expected = [r[i] + 0.7 * (v[i + 1] if i + 1 < n else 0.0) - v[i] for i in range(n)]
        close(adv[b], expected + [0.0] * (6 - n))
    # general γ, λ against the plain loop
    adv, _ = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    for b, n in enumerate(lengths):
        expected = _python_gae(rewards[b, :n].tolist(), values[b, :n].tolist(), 0.95, 0.9)
        close(adv[b], expected + [0.0] * (6 - n))


def test_gae_outputs_are_constants():
    values = t([[0.3, 0.6, 0.4]], requires_grad=True)
    adv, ret = gae(t([[1.0, 0.5, 2.0]]), values, t([[1, 1, 1]]))
    assert not adv.requires_grad and not ret.requires_grad


# --- KL-penalised rewards -----------------------------------------------------------------------


def test_kl_penalised_rewards_put_score_on_last_masked_token():
    logps = t([[-1.0, -2.0, -0.5, -3.0], [-9.0, -1.5, -0.2, -4.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = t([[-1.5, -1.0, -0.5, -1.0], [-1.0, -1.0, -0.7, -2.0], [-2.0, -2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    scores = t([2.0, -1.0, 5.0])
    rewards, kl = kl_penalised_rewards(scores, logps, ref, mask, beta=0.1)
    # k1 = logp − ref: row0 [0.5, −1, 0], row1 [·, −0.5, 0.5]
    close(kl, [[0.5, -1.0, 0.0, 0.0], [0.0, -0.5, 0.5, 0.0], [0.0] * 4])
    close(rewards, [[-0.05, 0.1, 2.0, 0.0], [0.0, 0.05, -0.05 - 1.0, 0.0], [0.0] * 4])

    # k3 with a 0-dim tensor β: k3 = e^(ref−logp) − (ref−logp) − 1
    rewards3, kl3 = kl_penalised_rewards(scores, logps, ref, mask, beta=t(0.5), estimator="k3")
    for b in range(3):
        for i in range(4):
            if mask[b, i]:
                d = ref[b, i].item() - logps[b, i].item()
                k3 = math.exp(d) - d - 1
                last = i == max(j for j in range(4) if mask[b, j])
                assert kl3[b, i].item() == pytest.approx(k3, abs=1e-12)
                expected = -0.5 * k3 + scores[b].item() * last
                assert rewards3[b, i].item() == pytest.approx(expected, abs=1e-12)
            else:
                assert kl3[b, i] == 0 and rewards3[b, i] == 0


# --- sequence-level advantages ------------------------------------------------------------------


def test_leave_one_out_literal_and_zero_sum():
    adv = leave_one_out_advantages(t([1.0, 2.0, 3.0, 10.0, 10.0, 16.0]), k=3)
    # 1 − (2+3)/2, 2 − (1+3)/2, 3 − (1+2)/2 ; 10 − 13, 10 − 13, 16 − 10
    close(adv, [-1.5, 0.0, 1.5, -3.0, -3.0, 6.0])
    close(adv.view(2, 3).sum(-1), [0.0, 0.0])
    with pytest.raises(ValueError, match="divisible"):
        leave_one_out_advantages(t([1.0, 2.0, 3.0, 4.0, 5.0]), k=2)
    with pytest.raises(ValueError, match="k"):
        leave_one_out_advantages(t([1.0, 2.0]), k=1)


def test_group_normalised_literal_unscaled_and_ties():
    # group [1, 2, 6]: mean 3, unbiased var (4 + 1 + 9)/2 = 7
    adv = group_normalised_advantages(t([1.0, 2.0, 6.0, 5.0, 5.0, 5.0]), k=3)
    s = math.sqrt(7) + 1e-4
    close(adv, [-2 / s, -1 / s, 3 / s, 0.0, 0.0, 0.0])
    assert torch.isfinite(adv).all()
    close(group_normalised_advantages(t([1.0, 2.0, 6.0, 5.0, 5.0, 5.0]), k=3, scale=False),
          [-2.0, -1.0, 3.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="divisible"):
        group_normalised_advantages(t([1.0, 2.0, 6.0, 5.0]), k=3)


def test_whiten_and_explained_variance():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv = whiten_advantages(t([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 99.0, 99.0]]), mask)
    # kept 1..5: mean 3, unbiased var 2.5
    close(adv, [[-2 / math.sqrt(2.5), -1 / math.sqrt(2.5), 0.0, 0.0],
                [1 / math.sqrt(2.5), 2 / math.sqrt(2.5), 0.0, 0.0]], tol=1e-7)
    returns = t([[1.0, 2.0, 3.0, 50.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    # residual [0, 0, 1]: var 1/3; var(returns) = 1
    close(explained_variance(t([[1.0, 2.0, 2.0, -7.0]]), returns, m), t(2 / 3))
    close(explained_variance(returns, returns, m), t(1.0))
    assert torch.isnan(explained_variance(returns, t([[4.0, 4.0, 4.0, 0.0]]), m))


# --- clipped policy loss ------------------------------------------------------------------------

# (ρ, A) per token, ε = 0.2; the token's loss −min(ρA, clip(ρ)A) and d loss/d logp by hand:
#   (1.1,  2) inside          −2.2   grad −Aρ = −2.2
#   (1.5,  2) above, clipped  −2.4   grad 0
#   (0.5,  2) below, A > 0    −1.0   grad −1.0  (clip not binding)
#   (1.5, −1) above, A < 0     1.5   grad  1.5  (clip not binding)
#   (0.5, −1) below, clipped   0.8   grad 0
#   (0.9, −1) inside           0.9   grad  0.9
RATIOS = [[1.1, 1.5, 0.5, 1.5], [0.5, 0.9, 1e6, 1.0]]
ADVS = [[2.0, 2.0, 2.0, -1.0], [-1.0, -1.0, 50.0, 3.0]]
MASK = [[1, 1, 1, 1], [1, 1, 0, 0]]  # ragged: 4 tokens, then 2
TOKEN_LOSS = [[-2.2, -2.4, -1.0, 1.5], [0.8, 0.9, 0.0, 0.0]]
TOKEN_GRAD = [[-2.2, 0.0, -1.0, 1.5], [0.0, 0.9, 0.0, 0.0]]


def policy_inputs():
    old = t([[-1.0, -2.0, -0.5, -1.5], [-0.3, -2.5, -1.0, -1.0]])
    logps = (old + torch.log(t(RATIOS))).requires_grad_()
    return logps, old, t(ADVS), torch.tensor(MASK)


@pytest.mark.parametrize(
    "aggregation,weights",
    [
        ("token_mean", [[1 / 6] * 4, [1 / 6] * 4]),
        ("sequence_mean", [[1 / 8] * 4, [1 / 4] * 4]),  # 1/(B·|o_i|)
        ("token_sum_norm", [[1 / 10] * 4, [1 / 10] * 4]),  # 1/(B·max_tokens), max_tokens 5
    ],
)
def test_clipped_policy_loss_by_hand(aggregation, weights):
    logps, old, adv, mask = policy_inputs()
    loss, metrics = clipped_policy_loss(logps, old, adv, mask, aggregation=aggregation, max_tokens=5)
    kept = [(b, i) for b in range(2) for i in range(4) if MASK[b][i]]
    expected = sum(TOKEN_LOSS[b][i] * weights[b][i] for b, i in kept)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, logps)
    close(grad, [[TOKEN_GRAD[b][i] * weights[b][i] * MASK[b][i] for i in range(4)]
                 for b in range(2)])
    assert metrics["clip_fraction"].item() == pytest.approx(2 / 6)
    ratios = [RATIOS[b][i] for b, i in kept]
    assert metrics["ratio_mean"].item() == pytest.approx(sum(ratios) / 6)
    approx_kl = sum(r - 1 - math.log(r) for r in ratios) / 6
    assert metrics["approx_kl"].item() == pytest.approx(approx_kl)
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_clipped_policy_loss_sequence_advantages_and_clip_high():
    logps, old, _, mask = policy_inputs()
    per_seq = t([2.0, -1.0])
    got, _ = clipped_policy_loss(logps, old, per_seq, mask)
    want, _ = clipped_policy_loss(logps, old, per_seq[:, None].expand(2, 4), mask)
    close(got, want)
    # ρ = 1.25, A = 1: clipped at 1.2 symmetrically; inside with clip_high = 0.28 (DAPO)
    lp, o, a, m = t([[math.log(1.25)]]), t([[0.0]]), t([1.0]), torch.ones(1, 1)
    assert clipped_policy_loss(lp, o, a, m)[0].item() == pytest.approx(-1.2)
    loss, metrics = clipped_policy_loss(lp, o, a, m, clip_high=0.28)
    assert loss.item() == pytest.approx(-1.25) and metrics["clip_fraction"] == 0


def test_aggregate_modes_on_a_ragged_mask():
    x = t([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert aggregate(x, mask, "token_mean").item() == pytest.approx(15 / 5)
    assert aggregate(x, mask, "sequence_mean").item() == pytest.approx((2 + 4.5) / 2)
    assert aggregate(x, mask, "token_sum_norm", max_tokens=10).item() == pytest.approx(15 / 20)
    with pytest.raises(ValueError, match="needs max_tokens"):  # never the padded width
        aggregate(x, mask, "token_sum_norm")
    with pytest.raises(ValueError, match="token_mean, sequence_mean, sequence_sum, token_sum_norm"):
        aggregate(x, mask, "mean")


def _away_from_clip_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(3, 5, generator=gen, dtype=torch.float64) * 3
    # log-ratios in {−0.6, −0.05, 0.1, 0.5}: none within 0.05 of log 0.8 or log 1.2
    choices = t([-0.6, -0.05, 0.1, 0.5])
    log_ratio = choices[torch.randint(0, 4, (3, 5), generator=gen)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    return (old + log_ratio).requires_grad_(), old, mask, gen


def test_gradcheck_clipped_policy_and_grpo():
    logps, old, mask, gen = _away_from_clip_inputs(1)
    adv = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    ref = old - 0.3
    for aggregation in ("token_mean", "sequence_mean", "token_sum_norm"):

        def policy(lp, aggregation=aggregation):
            return clipped_policy_loss(lp, old, adv, mask, aggregation=aggregation, max_tokens=7)[0]

        assert torch.autograd.gradcheck(policy, (logps,))
    grpo = lambda lp: grpo_loss(lp, old, ref, adv[:, 0], mask, beta=0.1)[0]
    assert torch.autograd.gradcheck(grpo, (logps,))
    corrected = lambda lp: grpo_loss(lp, old, ref, adv[:, 0], mask, beta=0.1, kl_bias_correction=True)[0]
    assert torch.autograd.gradcheck(corrected, (logps,))


def test_dr_grpo_loss_does_not_depend_on_padding():
    # the same rows padded to 10 and to 40 columns (a micro-batch's longest row sets the width):
    # dividing by B × width gave 0.245 against 0.061; B × max_new_tokens gives one loss and gradient
    gen = torch.Generator().manual_seed(3)
    narrow_lp = -torch.rand(2, 10, generator=gen, dtype=torch.float64)
    narrow_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    adv = t([1.0, -0.5])
    results = []
    for width in (10, 40):
        lp = torch.cat([narrow_lp, torch.zeros(2, width - 10, dtype=torch.float64)], dim=1).requires_grad_()
        mask = torch.cat([narrow_mask, torch.zeros(2, width - 10, dtype=torch.long)], dim=1)
        ref = lp.detach() - 0.2
        loss, _ = grpo_loss(lp, lp, ref, adv, mask, beta=0.04, aggregation="token_sum_norm", max_tokens=16)
        (grad,) = torch.autograd.grad(loss, lp)
        results.append((loss, grad[:, :10]))
    close(results[0][0], results[1][0])
    close(results[0][1], results[1][1])
    # by hand: Σ over masked tokens of (−A + 0.04·k3) / (2 × 16), k3 of a constant log-ratio 0.2
    k3 = math.exp(-0.2) + 0.2 - 1
    assert results[0][0].item() == pytest.approx(((-1.0 + 0.04 * k3) * 4 + (0.5 + 0.04 * k3) * 9) / 32, abs=1e-12)


def _categorical_kl_gradients(theta_old, theta_ref, theta, bias_correction):
    """Exact expectations over a 5-way categorical (no sampling): the gradient in θ of
    E_{y~π_old}[per-token KL term of grpo_loss at y], and of the true KL(π_θ‖π_ref)."""
    theta = theta.clone().requires_grad_()
    logp = torch.log_softmax(theta, -1)
    old, ref = torch.log_softmax(theta_old, -1), torch.log_softmax(theta_ref, -1)
    terms = []
    for y in range(5):  # each outcome as a one-token batch, with zero advantage
        loss, _ = grpo_loss(logp[y].view(1, 1), old[y].view(1, 1), ref[y].view(1, 1), t([0.0]), torch.ones(1, 1),
                            beta=1.0, aggregation="token_mean", kl_bias_correction=bias_correction)
        terms.append(old[y].exp() * loss)
    (expected_grad,) = torch.autograd.grad(sum(terms), theta, retain_graph=True)
    true_kl = (logp.exp() * (logp - ref)).sum()
    (kl_grad,) = torch.autograd.grad(true_kl, theta, retain_graph=True)
    ref_to_policy_kl = (ref.exp() * (ref - logp)).sum()
    (ref_to_policy_grad,) = torch.autograd.grad(ref_to_policy_kl, theta)
    return expected_grad, kl_grad, ref_to_policy_grad


@pytest.mark.parametrize("off_policy", [False, True])
def test_grpo_kl_bias_correction_gives_the_gradient_of_kl_to_the_reference(off_policy):
    theta_ref = t([0.3, -1.0, 0.5, 0.0, 1.2])
    theta = t([1.0, 0.2, -0.7, 0.4, 0.1])
    theta_old = theta + (t([0.5, -0.3, 0.2, 0.0, -0.6]) if off_policy else 0.0)
    corrected, kl_grad, _ = _categorical_kl_gradients(theta_old, theta_ref, theta, bias_correction=True)
    close(corrected, kl_grad, tol=1e-12)
    plain, kl_grad, ref_to_policy_grad = _categorical_kl_gradients(theta_old, theta_ref, theta, bias_correction=False)
    assert (plain - kl_grad).abs().max() > 1e-2  # the plain k3 term is not KL(π‖π_ref)'s gradient
    if not off_policy:
        close(plain, ref_to_policy_grad, tol=1e-12)  # on-policy it is that of KL(π_ref‖π), the other way round


def test_grpo_kl_bias_correction_value_is_ratio_times_k3():
    logps, old, mask, _ = _away_from_clip_inputs(4)
    ref = old - 0.3
    adv = t([0.0, 0.0, 0.0])
    loss, metrics = grpo_loss(logps, old, ref, adv, mask, beta=0.5, aggregation="token_mean", kl_bias_correction=True)
    rho = (logps - old).exp()
    d = ref - logps
    k3 = d.exp() - d - 1
    close(loss, 0.5 * (rho * k3)[mask.bool()].mean(), tol=1e-12)
    close(metrics["kl"], k3[mask.bool()].mean(), tol=1e-12)  # the logged KL stays the plain k3 mean


@pytest.mark.parametrize("corrected", [False, True])
def test_grpo_kl_term_of_one_token_by_hand(corrected):
    # π 0.5, π_old 0.25, π_ref 0.4: ρ = 2, k3 = 0.8 − ln 0.8 − 1; d k3/d log π = 1 − π_ref/π = 0.2
    logp = t([[math.log(0.5)]]).requires_grad_()
    loss, _ = grpo_loss(logp, t([[math.log(0.25)]]), t([[math.log(0.4)]]), t([0.0]), torch.ones(1, 1), beta=1.0,
                        aggregation="token_mean", kl_bias_correction=corrected)
    (grad,) = torch.autograd.grad(loss, logp)
    k3 = 0.8 - math.log(0.8) - 1
    # corrected: ρ·k3, whose derivative in log π is ρ·k3 + ρ·(1 − π_ref/π)
    assert loss.item() == pytest.approx(2 * k3 if corrected else k3, abs=1e-12)
    assert grad.item() == pytest.approx(2 * k3 + 2 * 0.2 if corrected else 0.2, abs=1e-12)


# --- value loss and PPO -------------------------------------------------------------------------

# (v, v_old, R), ε = 0.2:
#   (1.0, 0.5, 2.0): v_clip 0.7, (v−R)² 1, (v_clip−R)² 1.69 → ½·1.69 = 0.845, clipped (grad 0)
#   (1.0, 0.9, 0.0): v_clip = v                                → 0.5,  grad (v−R) = 1
#   (0.0, 0.5, 0.6): v_clip 0.3, 0.36 vs 0.09                  → 0.18, grad −0.6
#   (2.0, 1.0, 1.0): v_clip 1.2, 1 vs 0.04                     → 0.5,  grad 1
def value_inputs():
    values = t([[1.0, 1.0, 0.0, 2.0, 5.0]], requires_grad=True)
    old_values = t([[0.5, 0.9, 0.5, 1.0, 0.0]])
    returns = t([[2.0, 0.0, 0.6, 1.0, -5.0]])
    return values, old_values, returns, torch.tensor([[1, 1, 1, 1, 0]])


def test_clipped_value_loss_by_hand():
    values, old, returns, mask = value_inputs()
    loss, metrics = clipped_value_loss(values, old, returns, mask)
    assert loss.item() == pytest.approx((0.845 + 0.5 + 0.18 + 0.5) / 4)
    (grad,) = torch.autograd.grad(loss, values)
    close(grad, [[0.0, 1 / 4, -0.6 / 4, 1 / 4, 0.0]])
    assert metrics["value_clip_fraction"].item() == pytest.approx(1 / 4)
    assert metrics["value_mse"].item() == pytest.approx((1 + 1 + 0.36 + 1) / 4)

    loss, metrics = clipped_value_loss(values, old, returns, mask, clip=None)
    assert loss.item() == pytest.approx(0.5 * (1 + 1 + 0.36 + 1) / 4)
    assert metrics["value_clip_fraction"] == 0


def test_ppo_loss_is_policy_plus_weighted_value():
    logps, old, adv, mask = policy_inputs()
    values, old_values, returns, _ = value_inputs()
    values, old_values, returns = (x[:, :4].expand(2, 4) for x in (values, old_values, returns))
    loss, metrics = ppo_loss(logps, old, adv, values, old_values, returns, mask, vf_coef=0.1)
    policy = sum(TOKEN_LOSS[b][i] for b in range(2) for i in range(4) if MASK[b][i]) / 6
    value = ((0.845 + 0.5 + 0.18 + 0.5) + (0.845 + 0.5)) / 6  # row 1 keeps its first 2 tokens
    assert loss.item() == pytest.approx(policy + 0.1 * value)
    assert metrics["policy/loss"].item() == pytest.approx(policy)
    assert metrics["value/loss"].item() == pytest.approx(value)
    assert {"loss", "policy/clip_fraction", "policy/approx_kl", "policy/ratio_mean",
            "value/value_clip_fraction", "value/value_mse"} <= metrics.keys()

    # rollout correction's importance weights scale the policy tokens only, not the value fit
    weights = torch.tensor([[0.5, 2.0, 1.0, 0.0], [1.5, 1.0, 1.0, 1.0]])
    weighted, weighted_metrics = ppo_loss(logps, old, adv, values, old_values, returns, mask, vf_coef=0.1,
                                          token_weights=weights)
    policy_w = sum(TOKEN_LOSS[b][i] * weights[b][i].item() for b in range(2) for i in range(4) if MASK[b][i]) / 6
    assert policy_w != pytest.approx(policy)
    assert weighted_metrics["policy/loss"].item() == pytest.approx(policy_w)
    assert weighted_metrics["value/loss"].item() == pytest.approx(value)
    assert weighted.item() == pytest.approx(policy_w + 0.1 * value)


# --- GRPO ---------------------------------------------------------------------------------------


def test_grpo_loss_is_surrogate_plus_beta_k3_by_hand():
    logps, old, mask, _ = _away_from_clip_inputs(2)
    ref = old + t([[0.2, -0.4, 0.0, 0.3, 1.0]])
    adv = t([1.5, -0.5, 0.8])
    beta = 0.04
    loss, metrics = grpo_loss(logps, old, ref, adv, mask, beta=beta)
    row_means, kls = [], []
    for b in range(3):
        terms = []
        for i in range(5):
            if mask[b, i]:
                rho = math.exp(logps[b, i].item() - old[b, i].item())
                a = adv[b].item()
                surrogate = -min(rho * a, min(max(rho, 0.8), 1.2) * a)
                d = ref[b, i].item() - logps[b, i].item()
                k3 = math.exp(d) - d - 1
                kls.append(k3)
                terms.append(surrogate + beta * k3)
        row_means.append(sum(terms) / len(terms))
    assert loss.item() == pytest.approx(sum(row_means) / 3, abs=1e-12)
    assert metrics["kl"].item() == pytest.approx(sum(kls) / len(kls), abs=1e-12)
    assert "clip_fraction" in metrics


def test_grpo_on_policy_gradient_is_advantage_weighted_score():
    logps = t([[-1.0, -2.0, -0.5], [-0.3, -1.2, -9.0]], requires_grad=True)
    ref = t([[-1.5, -2.0, -0.1], [-0.3, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = t([2.0, -1.0])
    # one update per rollout: old_logps is logps itself (detached inside), ρ = 1
    loss, metrics = grpo_loss(logps, logps, None, adv, mask, beta=0.0)
    (grad,) = torch.autograd.grad(loss, logps)
    # sequence_mean: d/dlogp_t = −A_i/(B·|o_i|)
    close(grad, [[-2.0 / 6] * 3, [1.0 / 4, 1.0 / 4, 0.0]])
    assert metrics["clip_fraction"] == 0 and "kl" not in metrics
    # with β: + β·(1 − π_ref/π) per token (the derivative of k3)
    loss, _ = grpo_loss(logps, logps, ref, adv, mask, beta=0.1, aggregation="token_mean")
    (grad,) = torch.autograd.grad(loss, logps)
    a = [[2.0] * 3, [-1.0] * 3]
    expected = [[0.0] * 3 for _ in range(2)]
    for b in range(2):
        for i in range(3):
            if mask[b, i]:
                k3_grad = 1 - math.exp(ref[b, i].item() - logps[b, i].item())
                expected[b][i] = (-a[b][i] + 0.1 * k3_grad) / 5
    close(grad, expected)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, logps, None, adv, mask, beta=0.04)


# --- REINFORCE ----------------------------------------------------------------------------------


def test_reinforce_loss_literal():
    logps = t([[-1.0, -2.0, -7.0], [-0.5, -7.0, -7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, metrics = reinforce_loss(logps, t([2.0, -1.0]), mask)
    # mean(−2·(−3), 1·(−0.5)) = (6 − 0.5)/2
    assert loss.item() == pytest.approx(2.75)
    (grad,) = torch.autograd.grad(loss, logps)
    close(grad, [[-1.0, -1.0, 0.0], [0.5, 0.0, 0.0]])
    assert metrics["sequence_logp"].item() == pytest.approx(-1.75)


# --- KL controllers -----------------------------------------------------------------------------


def test_adaptive_kl_controller_by_hand_and_resume():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    ctl.update(6.6, n_steps=100)  # e = 0.1           → β = 0.2·1.001
    assert ctl.beta == pytest.approx(0.2002, rel=1e-12)
    ctl.update(12.0, n_steps=100)  # e = 1 → clip 0.2  → β·1.002
    assert ctl.beta == pytest.approx(0.2006004, rel=1e-12)
    saved = ctl.state_dict()
    ctl.update(0.0, n_steps=500)  # e = −1 → clip −0.2 → β·0.99
    assert ctl.beta == pytest.approx(0.198594396, rel=1e-12)

    resumed = make_kl_controller(0.15, target=6.0, horizon=10_000)
    assert isinstance(resumed, AdaptiveKLController)
    resumed.load_state_dict(saved)
    resumed.update(0.0, n_steps=500)
    assert resumed.beta == ctl.beta
    with pytest.raises(ValueError, match="adaptive"):
        FixedKLController(0.1).load_state_dict(saved)


def test_fixed_kl_controller():
    ctl = make_kl_controller(0.05)
    assert isinstance(ctl, FixedKLController)
    ctl.update(100.0, n_steps=64)
    assert ctl.beta == 0.05
    other = FixedKLController(0.3)
    other.load_state_dict(ctl.state_dict())
    assert other.beta == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0)


def test_sequence_sum_aggregation_is_mean_of_row_sums():
    from alignlab.losses.policy_gradient import aggregate

    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert aggregate(x, mask, "sequence_sum").item() == pytest.approx(((1 + 2) + (5 + 6)) / 2)
