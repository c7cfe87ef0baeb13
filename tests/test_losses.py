"""losses: each objective against its closed form written independently with `math`, gradients too."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses import bradley_terry_loss, dpo_loss, sft_loss

F64 = torch.float64


def neg_log_sigmoid(x: float) -> float:
    """−log σ(x) = log(1 + e^{−x}), written stably for either sign."""
    return math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=True)


# --- SFT ---------------------------------------------------------------------------------------

LOGPS = [[-1.0, -2.0, -0.5, -9.0], [-0.25, -3.0, -7.0, -7.0]]
MASK = [[1, 1, 1, 0], [0, 1, 0, 0]]


def test_sft_loss_is_mean_nll_over_masked_tokens_with_gradient():
    logps = t(LOGPS)
    loss, metrics = sft_loss(logps, torch.tensor(MASK))
    assert loss.item() == pytest.approx((1.0 + 2.0 + 0.5 + 3.0) / 4, abs=1e-12)
    assert metrics["nll"].item() == pytest.approx(6.5 / 4) and metrics["tokens"].item() == 4
    assert all(not v.requires_grad for v in metrics.values())
    loss.backward()
    # d loss / d logp = −1/N on masked tokens, 0 elsewhere.
    expected = -torch.tensor(MASK, dtype=F64) / 4
    torch.testing.assert_close(logps.grad, expected, rtol=0, atol=1e-15)


def test_sft_loss_normalizer_gives_gradient_accumulation_property():
    gen = torch.Generator().manual_seed(0)
    full = -torch.rand(5, 6, generator=gen, dtype=F64) * 4
    mask = torch.rand(5, 6, generator=gen) > 0.4
    mask[0] = True  # make the micro-batches' token counts clearly differ
    whole = full.clone().requires_grad_(True)
    loss_whole, _ = sft_loss(whole, mask)
    loss_whole.backward()

    parts = full.clone().requires_grad_(True)
    global_tokens = mask.sum()  # a tensor normalizer, as a loop would pass it
    total = sum(sft_loss(parts[rows], mask[rows], normalizer=global_tokens)[0] for rows in (slice(0, 2), slice(2, 5)))
    total.backward()
    assert total.item() == pytest.approx(loss_whole.item(), abs=1e-12)
    torch.testing.assert_close(parts.grad, whole.grad, rtol=0, atol=1e-15)
    # Dividing each micro-batch by its own count would NOT give the same loss here.
    naive = sum(sft_loss(full[rows], mask[rows])[0] for rows in (slice(0, 2), slice(2, 5))) / 2
    assert naive.item() != pytest.approx(loss_whole.item(), abs=1e-6)
    # A float normalizer works too; a non-positive one is rejected.
    assert sft_loss(full, mask, normalizer=float(global_tokens))[0].item() == pytest.approx(loss_whole.item())
    with pytest.raises(ValueError, match="normalizer"):
        sft_loss(full, mask, normalizer=0)


def test_sft_loss_gradcheck():
    mask = torch.tensor(MASK)
    assert torch.autograd.gradcheck(lambda x: sft_loss(x, mask)[0], (t(LOGPS),))
    assert torch.autograd.gradcheck(lambda x: sft_loss(x, mask, normalizer=7.0)[0], (t(LOGPS),))


# --- Bradley–Terry -----------------------------------------------------------------------------

R_W = [1.5, -0.2, 0.3, 2.0]
R_L = [0.5, 0.4, 0.3, -1.0]


def bt_closed_form(rw, rl, margin=0.0, p=1.0, c=0.0):
    d = rw - rl - margin
    return p * neg_log_sigmoid(d) + (1 - p) * neg_log_sigmoid(-d) + c * (rw + rl) ** 2


def test_bradley_terry_matches_closed_form_and_gradient():
    rw, rl = t(R_W), t(R_L)
    loss, metrics = bradley_terry_loss(rw, rl)
    expected = [bt_closed_form(a, b) for a, b in zip(R_W, R_L)]
    assert loss.item() == pytest.approx(sum(expected) / 4, abs=1e-12)
    loss.backward()
    # d/dr_w of −log σ(r_w − r_l) is −σ(−Δ); d/dr_l is +σ(−Δ); mean over 4 pairs.
    for i, (a, b) in enumerate(zip(R_W, R_L)):
        assert rw.grad[i].item() == pytest.approx(-sigmoid(-(a - b)) / 4, abs=1e-12)
        assert rl.grad[i].item() == pytest.approx(sigmoid(-(a - b)) / 4, abs=1e-12)
    assert metrics["accuracy"].item() == pytest.approx(0.5)  # pairs 0 and 3; the tie counts wrong
    assert metrics["reward_margin"].item() == pytest.approx(sum(a - b for a, b in zip(R_W, R_L)) / 4)
    assert metrics["chosen_reward"].item() == pytest.approx(sum(R_W) / 4)
    assert metrics["rejected_reward"].item() == pytest.approx(sum(R_L) / 4)
    assert metrics["loss"].item() == pytest.approx(loss.item())
    assert all(not v.requires_grad for v in metrics.values())


def test_bradley_terry_margin_and_centring_term():
    margins = [0.5, 1.0, 0.0, 2.5]
    c = 0.01
    rw, rl = t(R_W), t(R_L)
    loss, metrics = bradley_terry_loss(rw, rl, margin=torch.tensor(margins, dtype=F64), center_coef=c, reduction="none")
    for i, (a, b, m) in enumerate(zip(R_W, R_L, margins)):
        assert loss[i].item() == pytest.approx(bt_closed_form(a, b, margin=m, c=c), abs=1e-12)
    loss.sum().backward()
    for i, (a, b, m) in enumerate(zip(R_W, R_L, margins)):
        # d/dr_w [−log σ(r_w − r_l − m) + c(r_w + r_l)²] = −σ(−Δ) + 2c(r_w + r_l)
        assert rw.grad[i].item() == pytest.approx(-sigmoid(-(a - b - m)) + 2 * c * (a + b), abs=1e-12)
        assert rl.grad[i].item() == pytest.approx(sigmoid(-(a - b - m)) + 2 * c * (a + b), abs=1e-12)
    # The margin does not change the ranking accuracy; a scalar margin works too.
    assert metrics["accuracy"].item() == pytest.approx(0.5)
    scalar, _ = bradley_terry_loss(t(R_W), t(R_L), margin=0.5)
    assert scalar.item() == pytest.approx(sum(bt_closed_form(a, b, 0.5) for a, b in zip(R_W, R_L)) / 4, abs=1e-12)
    # With "mean", the centring term is c·mean((r_w + r_l)²).
    mean_loss, _ = bradley_terry_loss(t(R_W), t(R_L), center_coef=c)
    plain = sum(bt_closed_form(a, b) for a, b in zip(R_W, R_L)) / 4
    centring = c * sum((a + b) ** 2 for a, b in zip(R_W, R_L)) / 4
    assert mean_loss.item() == pytest.approx(plain + centring, abs=1e-12)
    with pytest.raises(ValueError, match="center_coef"):
        bradley_terry_loss(t(R_W), t(R_L), center_coef=-1.0)


def test_bradley_terry_soft_labels():
    labels = [1.0, 0.7, 0.5, 0.1]
    margin = 0.25
    loss, metrics = bradley_terry_loss(t(R_W), t(R_L), margin=margin, labels=torch.tensor(labels, dtype=F64), reduction="none")
    for i, (a, b, p) in enumerate(zip(R_W, R_L, labels)):
        assert loss[i].item() == pytest.approx(bt_closed_form(a, b, margin, p), abs=1e-12)
    # p = 1 is exactly the hard loss.
    hard, _ = bradley_terry_loss(t(R_W), t(R_L), margin=margin, reduction="none")
    ones, _ = bradley_terry_loss(t(R_W), t(R_L), margin=margin, labels=torch.ones(4, dtype=F64), reduction="none")
    torch.testing.assert_close(ones, hard, rtol=0, atol=1e-15)
    # accuracy: pair0 r_w>r_l & p>.5 right; pair1 r_w<r_l & p>.5 wrong; pair2 p=.5 -> 0.5; pair3 r_w>r_l & p<.5 wrong
    assert metrics["accuracy"].item() == pytest.approx(1.5 / 4)
    # At p = 0.5 and Δ = 0 the loss is flat.
    rw, rl = t([0.3]), t([0.3])
    half, _ = bradley_terry_loss(rw, rl, labels=torch.tensor([0.5], dtype=F64))
    half.backward()
    assert rw.grad.item() == pytest.approx(0.0, abs=1e-15)


def test_bradley_terry_reductions_and_gradcheck():
    none, _ = bradley_terry_loss(t(R_W), t(R_L), reduction="none")
    total, _ = bradley_terry_loss(t(R_W), t(R_L), reduction="sum")
    mean, _ = bradley_terry_loss(t(R_W), t(R_L), reduction="mean")
    assert none.shape == (4,)
    assert total.item() == pytest.approx(none.sum().item()) and mean.item() == pytest.approx(none.mean().item())
    with pytest.raises(ValueError, match="reduction"):
        bradley_terry_loss(t(R_W), t(R_L), reduction="max")
    margin = torch.tensor([0.5, 1.0, 0.0, 2.5], dtype=F64)
    labels = torch.tensor([1.0, 0.7, 0.5, 0.1], dtype=F64)
    fn = lambda a, b: bradley_terry_loss(a, b, margin=margin, labels=labels, center_coef=0.1)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (t(R_W), t(R_L)))


# --- DPO ---------------------------------------------------------------------------------------

PI_W = [-10.0, -22.5, -5.0, -31.0]
PI_L = [-12.0, -20.0, -5.5, -30.0]
REF_W = [-11.0, -21.0, -5.0, -33.0]
REF_L = [-11.5, -21.5, -5.0, -29.0]


def dpo_delta(i):
    return (PI_W[i] - REF_W[i]) - (PI_L[i] - REF_L[i])


def dpo_closed_form(i, beta, eps=0.0, p=None):
    z = beta * dpo_delta(i)
    if p is None:
        return (1 - eps) * neg_log_sigmoid(z) + eps * neg_log_sigmoid(-z)
    return p * neg_log_sigmoid(z) + (1 - p) * neg_log_sigmoid(-z)


def dpo_inputs():
    return t(PI_W), t(PI_L), t(REF_W), t(REF_L)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_matches_closed_form_with_analytic_gradient(beta):
    pw, pl, rw, rl = dpo_inputs()
    loss, metrics = dpo_loss(pw, pl, rw, rl, beta=beta)
    assert loss.item() == pytest.approx(sum(dpo_closed_form(i, beta) for i in range(4)) / 4, abs=1e-12)
    loss.backward()
    for i in range(4):
        # d/dΔ of −log σ(βΔ) is −β·σ(−βΔ); Δ rises with π_w and ref_l, falls with π_l and ref_w.
        g = -beta * sigmoid(-beta * dpo_delta(i)) / 4
        assert pw.grad[i].item() == pytest.approx(g, abs=1e-12)
        assert pl.grad[i].item() == pytest.approx(-g, abs=1e-12)
        assert rw.grad[i].item() == pytest.approx(-g, abs=1e-12)
        assert rl.grad[i].item() == pytest.approx(g, abs=1e-12)
    deltas = [dpo_delta(i) for i in range(4)]
    assert metrics["reward_margin"].item() == pytest.approx(beta * sum(deltas) / 4, abs=1e-12)
    assert metrics["accuracy"].item() == pytest.approx(sum(d > 0 for d in deltas) / 4)
    assert metrics["chosen_reward"].item() == pytest.approx(beta * sum(a - b for a, b in zip(PI_W, REF_W)) / 4)
    assert metrics["rejected_reward"].item() == pytest.approx(beta * sum(a - b for a, b in zip(PI_L, REF_L)) / 4)
    assert metrics["chosen_logratio"].item() == pytest.approx(sum(a - b for a, b in zip(PI_W, REF_W)) / 4)
    assert metrics["rejected_logratio"].item() == pytest.approx(sum(a - b for a, b in zip(PI_L, REF_L)) / 4)
    assert metrics["chosen_logps"].item() == pytest.approx(sum(PI_W) / 4)
    assert metrics["rejected_logps"].item() == pytest.approx(sum(PI_L) / 4)
    assert metrics["loss"].item() == pytest.approx(loss.item())
    assert all(not v.requires_grad for v in metrics.values())


def test_dpo_at_a_fresh_reference_is_ln2():
    pw, pl = t(PI_W), t(PI_L)
    loss, metrics = dpo_loss(pw, pl, pw.detach(), pl.detach(), beta=0.1, reduction="none")
    assert loss.tolist() == [math.log(2)] * 4
    assert metrics["reward_margin"].item() == 0.0 and metrics["accuracy"].item() == 0.0
    # The gradient there is −β/2 per pair on π_w: σ(0) = ½.
    loss.sum().backward()
    torch.testing.assert_close(pw.grad, torch.full((4,), -0.05, dtype=F64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_cdpo_label_smoothing(eps):
    beta = 0.5
    pw, pl, rw, rl = dpo_inputs()
    loss, _ = dpo_loss(pw, pl, rw, rl, beta=beta, label_smoothing=eps, reduction="sum")
    assert loss.item() == pytest.approx(sum(dpo_closed_form(i, beta, eps) for i in range(4)), abs=1e-12)
    loss.backward()
    for i in range(4):
        z = beta * dpo_delta(i)
        # d/dΔ [(1−ε)(−log σ(βΔ)) + ε(−log σ(−βΔ))] = −(1−ε)β·σ(−βΔ) + εβ·σ(βΔ)
        g = -(1 - eps) * beta * sigmoid(-z) + eps * beta * sigmoid(z)
        assert pw.grad[i].item() == pytest.approx(g, abs=1e-12)


def test_dpo_soft_labels():
    beta = 0.3
    labels = [1.0, 0.8, 0.5, 0.0]
    p = torch.tensor(labels, dtype=F64)
    pw, pl, rw, rl = dpo_inputs()
    loss, metrics = dpo_loss(pw, pl, rw, rl, beta=beta, labels=p, reduction="none")
    for i in range(4):
        assert loss[i].item() == pytest.approx(dpo_closed_form(i, beta, p=labels[i]), abs=1e-12)
    loss.sum().backward()
    for i in range(4):
        z = beta * dpo_delta(i)
        g = -labels[i] * beta * sigmoid(-z) + (1 - labels[i]) * beta * sigmoid(z)
        assert pw.grad[i].item() == pytest.approx(g, abs=1e-12)
    # deltas: +1.5, -3.0, +0.5, +3.0 → pair0 right, pair1 wrong, pair2 tie 0.5, pair3 (p=0, Δ>0) wrong
    assert metrics["accuracy"].item() == pytest.approx(1.5 / 4)
    # p = 1 equals the hard loss exactly.
    hard, _ = dpo_loss(*dpo_inputs(), beta=beta, reduction="none")
    soft_one, _ = dpo_loss(*dpo_inputs(), beta=beta, labels=torch.ones(4, dtype=F64), reduction="none")
    torch.testing.assert_close(soft_one, hard, rtol=0, atol=1e-15)
    # p = 0.5 at Δ = 0: the gradient w.r.t. Δ vanishes.
    pw0 = t([-3.0])
    tie, _ = dpo_loss(pw0, t([-4.0]), t([-3.0]), t([-4.0]), beta=beta, labels=torch.tensor([0.5], dtype=F64))
    tie.backward()
    assert pw0.grad.item() == pytest.approx(0.0, abs=1e-15)


def test_dpo_reductions_gradcheck_and_validation():
    none, _ = dpo_loss(*dpo_inputs(), reduction="none")
    total, _ = dpo_loss(*dpo_inputs(), reduction="sum")
    mean, _ = dpo_loss(*dpo_inputs())
    assert none.shape == (4,)
    assert total.item() == pytest.approx(none.sum().item()) and mean.item() == pytest.approx(none.mean().item())
    labels = torch.tensor([1.0, 0.8, 0.5, 0.0], dtype=F64)
    assert torch.autograd.gradcheck(lambda *x: dpo_loss(*x, beta=0.7, labels=labels)[0], dpo_inputs())
    assert torch.autograd.gradcheck(lambda *x: dpo_loss(*x, beta=0.7, label_smoothing=0.2)[0], dpo_inputs())
    for bad in (dict(beta=0.0), dict(beta=-0.1), dict(beta=float("nan")), dict(label_smoothing=0.5),
                dict(label_smoothing=-0.01), dict(reduction="max"),
                dict(label_smoothing=0.1, labels=torch.ones(4, dtype=F64))):
        with pytest.raises(ValueError):
            dpo_loss(*dpo_inputs(), **bad)
