"""The rest of the offline preference family: IPO, hinge, robust DPO, SimPO, ORPO, KTO, combine.

Each loss is checked against its closed form written independently with `math` (ORPO's log odds
with `decimal` at 50 digits), against hand-derived gradients, and with gradcheck in float64.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext, localcontext

import pytest
import torch

from alignlab.losses import (
    bradley_terry_loss,
    combine_losses,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    kto_weight_ratio_ok,
    orpo_loss,
    robust_dpo_loss,
    sft_loss,
    simpo_loss,
)

F64 = torch.float64
DPO_METRICS = {
    "loss", "reward_margin", "accuracy", "chosen_reward", "rejected_reward",
    "chosen_logratio", "rejected_logratio", "chosen_logps", "rejected_logps",
}


def neg_log_sigmoid(x: float) -> float:
    """−log σ(x) = log(1 + e^{−x}), written stably for either sign."""
    return math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=True)


def assert_detached_finite(metrics: dict) -> None:
    for key, value in metrics.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, key
        assert not value.requires_grad, key
        assert torch.isfinite(value), key


# --- the reference-based pairwise losses (IPO, hinge, robust DPO) ------------------------------

PI_W = [-10.0, -22.5, -5.0, -31.0]
PI_L = [-12.0, -20.0, -5.5, -30.0]
REF_W = [-11.0, -21.0, -5.0, -33.0]
REF_L = [-11.5, -21.5, -5.0, -29.0]
# Δ per pair: +1.5, −3.0, +0.5, +3.0


def delta(i: int) -> float:
    return (PI_W[i] - REF_W[i]) - (PI_L[i] - REF_L[i])


def pair_inputs():
    return t(PI_W), t(PI_L), t(REF_W), t(REF_L)


def assert_pair_grads(inputs, grad_of_delta) -> None:
    """Δ rises with π_w and ref_l and falls with π_l and ref_w, so d/dinputs = ±dloss/dΔ."""
    pw, pl, rw, rl = inputs
    for i in range(4):
        g = grad_of_delta(i)
        assert pw.grad[i].item() == pytest.approx(g, abs=1e-12)
        assert pl.grad[i].item() == pytest.approx(-g, abs=1e-12)
        assert rw.grad[i].item() == pytest.approx(-g, abs=1e-12)
        assert rl.grad[i].item() == pytest.approx(g, abs=1e-12)


def assert_pair_metrics(metrics, scale: float, loss_values: list[float]) -> None:
    assert set(metrics) == DPO_METRICS
    assert_detached_finite(metrics)
    deltas = [delta(i) for i in range(4)]
    assert metrics["loss"].item() == pytest.approx(sum(loss_values) / 4, abs=1e-12)
    assert metrics["reward_margin"].item() == pytest.approx(scale * sum(deltas) / 4, abs=1e-12)
    assert metrics["accuracy"].item() == pytest.approx(0.75)
    assert metrics["chosen_reward"].item() == pytest.approx(scale * sum(a - b for a, b in zip(PI_W, REF_W)) / 4)
    assert metrics["rejected_reward"].item() == pytest.approx(scale * sum(a - b for a, b in zip(PI_L, REF_L)) / 4)
    assert metrics["chosen_logps"].item() == pytest.approx(sum(PI_W) / 4)


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_ipo_matches_closed_form_with_analytic_gradient(tau):
    inputs = pair_inputs()
    loss, metrics = ipo_loss(*inputs, tau=tau)
    expected = [(delta(i) - 1 / (2 * tau)) ** 2 for i in range(4)]
    assert loss.item() == pytest.approx(sum(expected) / 4, abs=1e-10)
    loss.backward()
    assert_pair_grads(inputs, lambda i: 2 * (delta(i) - 1 / (2 * tau)) / 4)
    assert_pair_metrics(metrics, tau, expected)


def test_ipo_minimum_is_at_half_inverse_tau_with_zero_gradient():
    tau = 0.25  # target Δ = 1/(2τ) = 2
    # Pair 0: Δ = (−3 + 4) − (−5 + 8) = −2; pair 1: Δ = (−8 + 7.5) − (−9 + 10.5) = −2.
    loss, _ = ipo_loss(t([-3.0, -8.0]), t([-5.0, -9.0]), t([-4.0, -7.5]), t([-8.0, -10.5]), tau=tau, reduction="none")
    assert loss.tolist() == [16.0, 16.0]  # (−2 − 2)²
    # Raising π_w by 4 puts Δ exactly on the target.
    pw2 = t([1.0, -4.0])
    at_min, _ = ipo_loss(pw2, t([-5.0, -9.0]), t([-4.0, -7.5]), t([-8.0, -10.5]), tau=tau, reduction="none")
    assert at_min.tolist() == [0.0, 0.0]
    at_min.sum().backward()
    assert pw2.grad.tolist() == [0.0, 0.0]
    # Either side of the minimum the loss grows.
    for shift in (-0.1, 0.1):
        near, _ = ipo_loss(pw2.detach() + shift, t([-5.0, -9.0]), t([-4.0, -7.5]), t([-8.0, -10.5]), tau=tau)
        assert near.item() == pytest.approx(shift**2, abs=1e-12)


def test_hinge_matches_closed_form_zero_beyond_the_margin():
    beta = 1.0  # βΔ = 1.5, −3, 0.5, 3: pairs 0 and 3 are past the margin
    inputs = pair_inputs()
    loss, metrics = hinge_loss(*inputs, beta=beta, reduction="none")
    expected = [max(0.0, 1 - beta * delta(i)) for i in range(4)]
    assert loss.tolist() == pytest.approx(expected, abs=1e-12)
    assert loss[0].item() == 0.0 and loss[3].item() == 0.0
    loss.sum().backward()
    assert_pair_grads(inputs, lambda i: -beta if beta * delta(i) < 1 else 0.0)
    assert inputs[0].grad[0].item() == 0.0 and inputs[0].grad[3].item() == 0.0
    assert_pair_metrics(metrics, beta, expected)
    # Exactly at the margin βΔ = 1 the loss is 0 and so is the gradient.
    pw = t([-2.0])
    edge, _ = hinge_loss(pw, t([-3.0]), t([-2.0]), t([-1.0]), beta=0.5)  # Δ = 0 − (−2) = 2
    edge.backward()
    assert edge.item() == 0.0 and pw.grad.item() == 0.0


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_hinge_default_scale_gradient(beta):
    inputs = pair_inputs()
    loss, _ = hinge_loss(*inputs, beta=beta)
    assert loss.item() == pytest.approx(sum(max(0.0, 1 - beta * delta(i)) for i in range(4)) / 4, abs=1e-12)
    loss.backward()
    assert_pair_grads(inputs, lambda i: (-beta if beta * delta(i) < 1 else 0.0) / 4)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_robust_dpo_matches_closed_form_with_analytic_gradient(eps):
    beta = 0.5
    inputs = pair_inputs()
    loss, metrics = robust_dpo_loss(*inputs, beta=beta, label_smoothing=eps, reduction="sum")
    expected = [
        ((1 - eps) * neg_log_sigmoid(beta * delta(i)) - eps * neg_log_sigmoid(-beta * delta(i))) / (1 - 2 * eps)
        for i in range(4)
    ]
    assert loss.item() == pytest.approx(sum(expected), abs=1e-12)
    loss.backward()

    def grad(i):
        z = beta * delta(i)
        # d/dΔ: β·[−(1−ε)σ(−z) − εσ(z)]/(1−2ε)
        return beta * (-(1 - eps) * sigmoid(-z) - eps * sigmoid(z)) / (1 - 2 * eps)

    assert_pair_grads(inputs, grad)
    assert_pair_metrics(metrics, beta, expected)


def test_robust_dpo_is_unbiased_for_the_clean_loss_and_equals_dpo_at_zero_noise():
    beta = 0.5
    plain, plain_metrics = dpo_loss(*pair_inputs(), beta=beta, reduction="none")
    robust, robust_metrics = robust_dpo_loss(*pair_inputs(), beta=beta, label_smoothing=0.0, reduction="none")
    torch.testing.assert_close(robust, plain, rtol=0, atol=1e-15)
    for key in DPO_METRICS:
        torch.testing.assert_close(robust_metrics[key], plain_metrics[key], rtol=0, atol=1e-15)
    # With labels flipped at rate ε, the expected robust loss is the clean DPO loss.
    eps = 0.2
    pw, pl, rw, rl = pair_inputs()
    as_labelled, _ = robust_dpo_loss(pw, pl, rw, rl, beta=beta, label_smoothing=eps, reduction="none")
    flipped, _ = robust_dpo_loss(pl, pw, rl, rw, beta=beta, label_smoothing=eps, reduction="none")
    torch.testing.assert_close((1 - eps) * as_labelled + eps * flipped, plain, rtol=0, atol=1e-12)


def test_reference_pair_losses_gradcheck_and_validation():
    assert torch.autograd.gradcheck(lambda *x: ipo_loss(*x, tau=0.3)[0], pair_inputs())
    assert torch.autograd.gradcheck(lambda *x: hinge_loss(*x, beta=0.1)[0], pair_inputs())  # no kink nearby
    assert torch.autograd.gradcheck(lambda *x: robust_dpo_loss(*x, beta=0.7, label_smoothing=0.2)[0], pair_inputs())
    for fn, bad in ((ipo_loss, dict(tau=0.0)), (ipo_loss, dict(tau=-1.0)), (ipo_loss, dict(tau=float("nan"))),
                    (hinge_loss, dict(beta=0.0)), (hinge_loss, dict(beta=float("nan"))),
                    (robust_dpo_loss, dict(beta=-0.1)), (robust_dpo_loss, dict(label_smoothing=0.5)),
                    (robust_dpo_loss, dict(label_smoothing=-0.1)), (ipo_loss, dict(reduction="max")),
                    (hinge_loss, dict(reduction="max")), (robust_dpo_loss, dict(reduction="max"))):
        with pytest.raises(ValueError):
            fn(*pair_inputs(), **bad)


# --- SimPO ---------------------------------------------------------------------------------------

AVG_W = [-0.8, -1.6, -0.3, -2.0]
AVG_L = [-1.1, -1.2, -0.3, -3.5]


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 0.5), (10.0, 3.0), (0.5, 0.0)])
def test_simpo_matches_closed_form_with_analytic_gradient(beta, gamma):
    aw, al = t(AVG_W), t(AVG_L)
    loss, metrics = simpo_loss(aw, al, beta=beta, gamma=gamma)
    z = [beta * a - beta * b - gamma for a, b in zip(AVG_W, AVG_L)]
    assert loss.item() == pytest.approx(sum(neg_log_sigmoid(v) for v in z) / 4, abs=1e-12)
    loss.backward()
    for i in range(4):
        assert aw.grad[i].item() == pytest.approx(-beta * sigmoid(-z[i]) / 4, abs=1e-12)
        assert al.grad[i].item() == pytest.approx(beta * sigmoid(-z[i]) / 4, abs=1e-12)
    assert set(metrics) == {"loss", "reward_margin", "accuracy", "chosen_reward", "rejected_reward"}
    assert_detached_finite(metrics)
    assert metrics["chosen_reward"].item() == pytest.approx(beta * sum(AVG_W) / 4)
    assert metrics["rejected_reward"].item() == pytest.approx(beta * sum(AVG_L) / 4)
    assert metrics["reward_margin"].item() == pytest.approx(beta * (sum(AVG_W) - sum(AVG_L)) / 4)
    assert metrics["accuracy"].item() == pytest.approx(0.5)  # pairs 0, 3; the tie counts wrong
    assert torch.autograd.gradcheck(lambda a, b: simpo_loss(a, b, beta=beta, gamma=gamma)[0], (t(AVG_W), t(AVG_L)))


def test_simpo_without_margin_is_bradley_terry_on_scaled_averages():
    beta = 2.5
    simpo, _ = simpo_loss(t(AVG_W), t(AVG_L), beta=beta, gamma=0.0, reduction="none")
    bt, _ = bradley_terry_loss(beta * t(AVG_W), beta * t(AVG_L), reduction="none")
    torch.testing.assert_close(simpo, bt, rtol=0, atol=1e-15)
    # A margin γ is the Bradley–Terry margin on the same rewards.
    with_margin, _ = simpo_loss(t(AVG_W), t(AVG_L), beta=beta, gamma=0.7, reduction="none")
    bt_margin, _ = bradley_terry_loss(beta * t(AVG_W), beta * t(AVG_L), margin=0.7, reduction="none")
    torch.testing.assert_close(with_margin, bt_margin, rtol=0, atol=1e-15)
    for bad in (dict(beta=0.0), dict(beta=float("nan")), dict(gamma=-0.1), dict(gamma=float("nan")),
                dict(reduction="max")):
        with pytest.raises(ValueError):
            simpo_loss(t(AVG_W), t(AVG_L), **bad)


# --- ORPO ----------------------------------------------------------------------------------------

ORPO_W = [-0.4, -1.5, -1e-6, -0.7]
ORPO_L = [-0.9, -1.0, -50.0, -0.7]
NLL = [0.45, 1.7, 2e-6, 0.8]


def log_odds_exact(x: float) -> float:
    """log(P/(1−P)) with P = e^x, evaluated in 50-digit decimal arithmetic."""
    getcontext().prec = 50
    p = Decimal(x).exp()
    return float(Decimal(x) - (1 - p).ln())


def d_log_odds(x: float) -> float:
    """d/dx [x − log(1 − e^x)] = 1 + e^x/(1 − e^x) = 1/(1 − e^x)."""
    return -1 / math.expm1(x)


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_matches_closed_form_with_analytic_gradient(lam):
    aw, al, nll = t(ORPO_W), t(ORPO_L), t(NLL)
    loss, metrics = orpo_loss(aw, al, nll, lambda_=lam, reduction="none")
    ratios = [log_odds_exact(a) - log_odds_exact(b) for a, b in zip(ORPO_W, ORPO_L)]
    for i in range(4):
        assert loss[i].item() == pytest.approx(NLL[i] + lam * neg_log_sigmoid(ratios[i]), abs=1e-10)
    loss.sum().backward()
    for i in range(4):
        # −λ log σ(r): d/dr = −λσ(−r); r rises with log odds_w and falls with log odds_l.
        g = -lam * sigmoid(-ratios[i])
        assert aw.grad[i].item() == pytest.approx(g * d_log_odds(ORPO_W[i]), rel=1e-9)
        assert al.grad[i].item() == pytest.approx(-g * d_log_odds(ORPO_L[i]), rel=1e-9, abs=1e-30)
        assert nll.grad[i].item() == 1.0
    assert set(metrics) == {"loss", "nll", "log_odds_ratio", "or_loss", "accuracy", "chosen_reward", "rejected_reward"}
    assert_detached_finite(metrics)
    assert metrics["log_odds_ratio"].item() == pytest.approx(sum(ratios) / 4, abs=1e-10)
    assert metrics["or_loss"].item() == pytest.approx(lam * sum(neg_log_sigmoid(r) for r in ratios) / 4, abs=1e-10)
    assert metrics["nll"].item() == pytest.approx(sum(NLL) / 4)
    assert metrics["accuracy"].item() == pytest.approx(0.5)  # pairs 0 and 2; pair 1 loses, pair 3 ties
    assert metrics["chosen_reward"].item() == pytest.approx(sum(map(log_odds_exact, ORPO_W)) / 4, abs=1e-10)
    assert metrics["rejected_reward"].item() == pytest.approx(sum(map(log_odds_exact, ORPO_L)) / 4, abs=1e-10)
    # gradcheck's finite differences (step 1e-6) need inputs away from 0, where log odds are steep.
    smooth = (t([-0.4, -1.5, -0.05, -0.7]), t([-0.9, -1.0, -50.0, -0.02]), t(NLL))
    assert torch.autograd.gradcheck(lambda a, b, n: orpo_loss(a, b, n, lambda_=lam)[0], smooth)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_orpo_log_odds_stay_finite_at_the_extremes(dtype):
    extremes = [0.0, -1e-9, -1e-6, -0.69, -0.7, -50.0, -1e4]
    aw = torch.tensor(extremes, dtype=dtype, requires_grad=True)
    al = torch.tensor(list(reversed(extremes)), dtype=dtype, requires_grad=True)
    loss, metrics = orpo_loss(aw, al, torch.zeros(len(extremes), dtype=dtype), lambda_=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(aw.grad).all() and torch.isfinite(al.grad).all()
    assert_detached_finite(metrics)
    # Where the value is representable it is exact: −1e-6 gives log odds ≈ −log(1e-6) ≈ 13.8.
    if dtype == torch.float64:
        from alignlab.losses.orpo import log_odds

        got = log_odds(torch.tensor([-1e-6, -50.0, -0.7], dtype=dtype))
        for g, x in zip(got.tolist(), (-1e-6, -50.0, -0.7)):
            assert g == pytest.approx(log_odds_exact(x), abs=1e-10, rel=1e-12)
        # A certain response (mean log-prob 0) gets a large finite log odds, not inf.
        assert 30 < log_odds(torch.zeros(1, dtype=dtype)).item() < 40


def test_log1mexp_and_log_odds_keep_relative_accuracy():
    from alignlab.losses.orpo import log1mexp, log_odds

    xs = [-1e-12, -1e-9, -1e-3, -0.6931, -0.6932, -5.0, -50.0, -700.0]
    got = log1mexp(torch.tensor(xs, dtype=F64)).tolist()
    with localcontext() as ctx:
        ctx.prec = 400  # enough digits that 1 − e^{−700} is not rounded to 1
        exact = [float((1 - Decimal(x).exp()).ln()) for x in xs]
    for g, e, x in zip(got, exact, xs):
        assert g == pytest.approx(e, rel=1e-13, abs=0), x  # −50 → −1.9e-22: needs the log1p branch
    # Just below 0, exp(x) rounds to 1, so the discarded log1p branch is −inf there; its
    # gradient must not leak NaN into the one that is used.
    tiny = t([-1e-17])
    log1mexp(tiny).sum().backward()
    assert tiny.grad.item() == pytest.approx(-1e17, rel=1e-12)
    assert log_odds(torch.tensor([-1e-9], dtype=F64)).item() == pytest.approx(log_odds_exact(-1e-9), rel=1e-13)
    # float32: 1 − exp(−1e-6) cancels to a few digits; the stable form keeps float32 accuracy.
    x32 = torch.tensor([-1e-6], dtype=torch.float32)
    assert log_odds(x32).item() == pytest.approx(log_odds_exact(x32.item()), rel=1e-6)
    # bfloat16 is computed in float32: its own epsilon (7.8e-3) would cap −1e-3 far too early.
    x16 = torch.tensor([-1e-3], dtype=torch.bfloat16)
    out = log_odds(x16)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(log_odds_exact(x16.item()), rel=1e-6)


def test_orpo_validation():
    args = (t(ORPO_W), t(ORPO_L), t(NLL))
    for bad in (dict(lambda_=-0.1), dict(lambda_=float("nan")), dict(lambda_=float("inf")), dict(reduction="max")):
        with pytest.raises(ValueError):
            orpo_loss(*args, **bad)
    with pytest.raises(ValueError, match="chosen_nll"):
        orpo_loss(t(ORPO_W), t(ORPO_L), torch.tensor(1.0, dtype=F64))  # a batch mean, not per example
    # λ = 0 is plain SFT.
    sft_only, _ = orpo_loss(*args, lambda_=0.0)
    assert sft_only.item() == pytest.approx(sum(NLL) / 4, abs=1e-15)


# --- KTO -----------------------------------------------------------------------------------------

KTO_PI = [-10.0, -12.0, -7.0, -20.0, -4.0]
KTO_REF = [-11.0, -11.5, -7.5, -18.0, -4.0]
KTO_GOOD = [True, False, True, False, False]
# ρ = +1.0, −0.5, +0.5, −2.0, 0.0


def kto_closed_form(i, beta, z0, wd=1.0, wu=1.0, good=KTO_GOOD):
    rho = KTO_PI[i] - KTO_REF[i]
    if good[i]:
        return wd * (1 - sigmoid(beta * (rho - z0)))
    return wu * (1 - sigmoid(beta * (z0 - rho)))


def test_kto_reference_point_is_clamped_mean_and_detached():
    mp, mr = t([-9.0, -14.0, -6.0]), t([-10.0, -13.0, -6.5])  # ratios +1, −1, +0.5 → mean 1/6
    z0 = kto_reference_point(mp, mr)
    assert z0.shape == () and not z0.requires_grad
    assert z0.item() == pytest.approx(1 / 6, abs=1e-15)
    negative = kto_reference_point(t([-12.0, -9.0]), t([-10.0, -8.5]))  # mean −1.25 → clamped to 0
    assert negative.item() == 0.0
    # No gradient flows through z₀ into the mismatched log-probs.
    pi = t(KTO_PI)
    loss, _ = kto_loss(pi, t(KTO_REF), torch.tensor(KTO_GOOD), z0)
    loss.backward()
    assert mp.grad is None and mr.grad is None and pi.grad is not None
    # A reference point that carries a graph is detached inside kto_loss too.
    leaf = t([0.3])
    loss2, metrics = kto_loss(t(KTO_PI), t(KTO_REF), torch.tensor(KTO_GOOD), leaf.sum())
    loss2.backward()
    assert leaf.grad is None and not metrics["reference_point"].requires_grad
    with pytest.raises(ValueError, match="mismatched"):
        kto_reference_point(torch.zeros(0, dtype=F64), torch.zeros(0, dtype=F64))


@pytest.mark.parametrize(("beta", "z0", "wd", "wu"), [(0.1, 0.0, 1.0, 1.0), (0.5, 0.3, 1.0, 1.33), (2.0, 1.2, 0.7, 1.0)])
def test_kto_matches_closed_form_with_analytic_gradient(beta, z0, wd, wu):
    pi, ref = t(KTO_PI), t(KTO_REF)
    good = torch.tensor(KTO_GOOD)
    loss, metrics = kto_loss(pi, ref, good, torch.tensor(z0, dtype=F64), beta=beta, desirable_weight=wd,
                             undesirable_weight=wu, reduction="none")
    for i in range(5):
        assert loss[i].item() == pytest.approx(kto_closed_form(i, beta, z0, wd, wu), abs=1e-12)
    loss.sum().backward()
    for i in range(5):
        rho = KTO_PI[i] - KTO_REF[i]
        if KTO_GOOD[i]:  # d/dρ λ_D(1 − σ(a)), a = β(ρ − z₀): −λ_D β σ(a)σ(−a)
            a = beta * (rho - z0)
            g = -wd * beta * sigmoid(a) * sigmoid(-a)
        else:  # d/dρ λ_U(1 − σ(b)), b = β(z₀ − ρ): +λ_U β σ(b)σ(−b)
            b = beta * (z0 - rho)
            g = wu * beta * sigmoid(b) * sigmoid(-b)
        assert pi.grad[i].item() == pytest.approx(g, abs=1e-12)
        assert ref.grad[i].item() == pytest.approx(-g, abs=1e-12)
    assert set(metrics) == {"loss", "reference_point", "desirable_reward", "undesirable_reward", "desirable_fraction"}
    assert_detached_finite(metrics)
    assert metrics["loss"].item() == pytest.approx(sum(kto_closed_form(i, beta, z0, wd, wu) for i in range(5)) / 5)
    assert metrics["reference_point"].item() == pytest.approx(z0)
    assert metrics["desirable_reward"].item() == pytest.approx(beta * (1.0 + 0.5) / 2, abs=1e-12)
    assert metrics["undesirable_reward"].item() == pytest.approx(beta * (-0.5 - 2.0 + 0.0) / 3, abs=1e-12)
    assert metrics["desirable_fraction"].item() == pytest.approx(0.4)
    fn = lambda p, r: kto_loss(p, r, good, z0, beta=beta, desirable_weight=wd, undesirable_weight=wu)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (t(KTO_PI), t(KTO_REF)))


@pytest.mark.parametrize("kind", [True, False])
def test_kto_batch_of_one_kind_gives_no_nan(kind):
    good = [kind] * 5
    pi = t(KTO_PI)
    loss, metrics = kto_loss(pi, t(KTO_REF), torch.tensor(good), 0.2, beta=0.5)
    assert loss.item() == pytest.approx(sum(kto_closed_form(i, 0.5, 0.2, good=good) for i in range(5)) / 5, abs=1e-12)
    loss.backward()
    assert torch.isfinite(pi.grad).all()
    assert_detached_finite(metrics)
    absent = "undesirable_reward" if kind else "desirable_reward"
    assert metrics[absent].item() == 0.0
    assert metrics["desirable_fraction"].item() == float(kind)
    # A 0/1 integer mask reads the same as a bool one.
    as_int, _ = kto_loss(t(KTO_PI), t(KTO_REF), torch.tensor(good, dtype=torch.long), 0.2, beta=0.5)
    assert as_int.item() == loss.item()


def test_kto_validation_and_weight_ratio_guideline():
    args = (t(KTO_PI), t(KTO_REF), torch.tensor(KTO_GOOD), 0.0)
    for bad in (dict(beta=0.0), dict(beta=float("nan")), dict(desirable_weight=0.0), dict(undesirable_weight=-1.0),
                dict(desirable_weight=float("inf")), dict(reduction="max")):
        with pytest.raises(ValueError):
            kto_loss(*args, **bad)
    with pytest.raises(ValueError, match="desirable"):
        kto_loss(t(KTO_PI), t(KTO_REF), torch.tensor([True, False]), 0.0)
    assert kto_weight_ratio_ok(1.0, 1.0, 100, 100)  # ratio 1: the low end counts
    assert kto_weight_ratio_ok(1.0, 1.0, 4, 3)  # ratio exactly 4/3
    assert kto_weight_ratio_ok(1.0, 1.2, 130, 100)  # 130/120
    assert not kto_weight_ratio_ok(1.0, 1.0, 99, 100)  # just below 1
    assert not kto_weight_ratio_ok(1.0, 1.0, 135, 100)  # above 4/3
    assert not kto_weight_ratio_ok(1.0, 1.0, 10, 90)  # rare desirables, unweighted: ratio 1/9
    assert kto_weight_ratio_ok(10.0, 1.0, 10, 90)  # ... up-weighted λ_D = 10: ratio 100/90
    assert not kto_weight_ratio_ok(1.0, 1.0, 10, 0) and not kto_weight_ratio_ok(1.0, 1.0, 0, 10)
    for bad in ((0.0, 1.0, 1, 1), (1.0, -1.0, 1, 1), (1.0, 1.0, -1, 1)):
        with pytest.raises(ValueError):
            kto_weight_ratio_ok(*bad)


# --- combine -------------------------------------------------------------------------------------


def test_combine_losses_weights_terms_and_prefixes_metrics():
    pw = t(PI_W)
    token_logps = t([[-1.0, -2.0, -0.5], [-0.25, -3.0, -7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    dpo = dpo_loss(pw, t(PI_L), t(REF_W), t(REF_L), beta=0.1)
    nll = sft_loss(token_logps, mask)
    total, metrics = combine_losses([("dpo", 1.0, dpo), ("nll", 0.5, nll)])
    assert total.item() == pytest.approx(dpo[0].item() + 0.5 * nll[0].item(), abs=1e-15)
    assert set(metrics) == {f"dpo/{k}" for k in DPO_METRICS} | {"nll/nll", "nll/tokens", "loss"}
    for key in DPO_METRICS:
        assert torch.equal(metrics[f"dpo/{key}"], dpo[1][key])
    assert torch.equal(metrics["nll/tokens"], nll[1]["tokens"])
    assert metrics["loss"].item() == pytest.approx(total.item())
    assert_detached_finite(metrics)
    total.backward()
    # Each term's gradient arrives scaled by its weight.
    expected_pw = torch.tensor([-0.1 * sigmoid(-0.1 * delta(i)) / 4 for i in range(4)], dtype=F64)
    torch.testing.assert_close(pw.grad, expected_pw, rtol=0, atol=1e-15)
    torch.testing.assert_close(token_logps.grad, -0.5 * mask.to(F64) / 5, rtol=0, atol=1e-15)
    # Per-example ("none") terms combine elementwise; "loss" is then their mean.
    a = simpo_loss(t(AVG_W), t(AVG_L), reduction="none")
    b = ipo_loss(*pair_inputs(), reduction="none")
    both, both_metrics = combine_losses([("simpo", 2.0, a), ("ipo", 0.0, b)])
    torch.testing.assert_close(both, 2.0 * a[0], rtol=0, atol=1e-15)
    assert both_metrics["loss"].item() == pytest.approx(both.mean().item())


def test_combine_losses_validation():
    term = simpo_loss(t(AVG_W), t(AVG_L))
    per_example = simpo_loss(t(AVG_W), t(AVG_L), reduction="none")
    for bad in ([], [("a", 1.0, term), ("a", 1.0, term)], [("", 1.0, term)], [("a/b", 1.0, term)],
                [("a", -1.0, term)], [("a", float("nan"), term)], [("a", float("inf"), term)],
                [("a", 1.0, term), ("b", 1.0, per_example)]):
        with pytest.raises(ValueError):
            combine_losses(bad)


# --- reductions, across the family -----------------------------------------------------------------


def family_calls():
    return {
        "ipo": lambda r: ipo_loss(*pair_inputs(), reduction=r),
        "hinge": lambda r: hinge_loss(*pair_inputs(), reduction=r),
        "robust": lambda r: robust_dpo_loss(*pair_inputs(), reduction=r),
        "simpo": lambda r: simpo_loss(t(AVG_W), t(AVG_L), reduction=r),
        "orpo": lambda r: orpo_loss(t(ORPO_W), t(ORPO_L), t(NLL), reduction=r),
        "kto": lambda r: kto_loss(t(KTO_PI), t(KTO_REF), torch.tensor(KTO_GOOD), 0.1, reduction=r),
    }


@pytest.mark.parametrize("name", ["ipo", "hinge", "robust", "simpo", "orpo", "kto"])
def test_reductions(name):
    call = family_calls()[name]
    none, metrics = call("none")
    total, _ = call("sum")
    mean, _ = call("mean")
    assert none.dim() == 1 and none.shape[0] in (4, 5)
    assert total.item() == pytest.approx(none.sum().item(), abs=1e-12)
    assert mean.item() == pytest.approx(none.mean().item(), abs=1e-12)
    assert metrics["loss"].item() == pytest.approx(mean.item(), abs=1e-12)  # "loss" is the batch mean
    with pytest.raises(ValueError, match="reduction"):
        call("max")
