"""APO-zero and APO-down against their closed forms on hand-made log-probs, gradients included."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses.apo import apo_down_loss, apo_zero_loss
from alignlab.losses.objective import PairLogps, PreferenceSettings
from alignlab.losses.preference import OBJECTIVES, preference_objective


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


POLICY_C, POLICY_R = [-3.0, -5.5, -2.0], [-4.0, -5.0, -6.5]
REF_C, REF_R = [-3.5, -5.0, -2.5], [-3.0, -5.5, -6.0]
BETA = 0.7


def _scaled_logratios() -> list[tuple[float, float]]:
    """(β·(log π − log π_ref) of chosen, of rejected) for each hand-made pair."""
    return [(BETA * (c - c0), BETA * (r - r0)) for c, r, c0, r0 in zip(POLICY_C, POLICY_R, REF_C, REF_R)]


def _inputs():
    pc = torch.tensor(POLICY_C, dtype=torch.float64, requires_grad=True)
    pr = torch.tensor(POLICY_R, dtype=torch.float64, requires_grad=True)
    return pc, pr, torch.tensor(REF_C, dtype=torch.float64), torch.tensor(REF_R, dtype=torch.float64)


def test_apo_zero_is_its_closed_form_with_its_gradient():
    pc, pr, rc, rr = _inputs()
    loss, metrics = apo_zero_loss(pc, pr, rc, rr, beta=BETA, reduction="sum")
    expected, grad_c, grad_r = 0.0, [], []
    for zw, zl in _scaled_logratios():
        expected += (1 - _sig(zw)) + _sig(zl)
        grad_c.append(-BETA * _sig(zw) * (1 - _sig(zw)))  # d/dc (1 - σ(β(c - c0)))
        grad_r.append(BETA * _sig(zl) * (1 - _sig(zl)))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert pc.grad.tolist() == pytest.approx(grad_c, rel=1e-12)
    assert pr.grad.tolist() == pytest.approx(grad_r, rel=1e-12)
    margin = [zw - zl for zw, zl in _scaled_logratios()]
    assert metrics["reward_margin"].item() == pytest.approx(sum(margin) / 3, rel=1e-12)
    assert metrics["accuracy"].item() == pytest.approx(sum(m > 0 for m in margin) / 3)


def test_apo_down_is_its_closed_form_with_its_gradient():
    pc, pr, rc, rr = _inputs()
    loss, _ = apo_down_loss(pc, pr, rc, rr, beta=BETA, reduction="mean")
    expected, grad_c, grad_r = 0.0, [], []
    for zw, zl in _scaled_logratios():
        d = zw - zl
        expected += (_sig(zw) + 1 - _sig(d)) / 3
        grad_c.append((BETA * _sig(zw) * (1 - _sig(zw)) - BETA * _sig(d) * (1 - _sig(d))) / 3)
        grad_r.append(BETA * _sig(d) * (1 - _sig(d)) / 3)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert pc.grad.tolist() == pytest.approx(grad_c, rel=1e-12)
    assert pr.grad.tolist() == pytest.approx(grad_r, rel=1e-12)


@pytest.mark.parametrize("fn", [apo_zero_loss, apo_down_loss])
def test_at_the_reference_both_losses_are_one_per_pair(fn):
    x = torch.tensor([-2.0, -7.0])
    loss, _ = fn(x, x + 1, x, x + 1, beta=0.1, reduction="none")
    assert loss.tolist() == pytest.approx([1.0, 1.0])


def test_the_registry_runs_apo_through_the_preference_objective():
    pc, pr, rc, rr = _inputs()
    lp = PairLogps(pc, pr, torch.ones(3), torch.ones(3), rc, rr)
    loss, _ = preference_objective([("apo_zero", 1.0)], lp, PreferenceSettings(beta=BETA))
    direct, _ = apo_zero_loss(pc, pr, rc, rr, beta=BETA)
    assert loss.item() == direct.item()
    assert OBJECTIVES["apo_zero"].needs_reference and OBJECTIVES["apo_down"].needs_reference
    with pytest.raises(ValueError, match="needs reference log-probs"):
        preference_objective([("apo_down", 1.0)], PairLogps(pc, pr, torch.ones(3), torch.ones(3)), PreferenceSettings())


# a value of each setting other than the default, where each changes the loss of the objectives reading it
CHANGED = {"label_smoothing": 0.2, "tau": 0.5, "gamma": 1.0, "orpo_lambda": 0.5, "ipo_length_normalize": True}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_reads_exactly_the_settings_its_registry_line_names(name):
    pc, pr, rc, rr = _inputs()
    lp = PairLogps(pc, pr, torch.tensor([3.0, 5.0, 2.0]), torch.tensor([4.0, 2.0, 6.0]), rc, rr)
    base, _ = preference_objective([(name, 1.0)], lp, PreferenceSettings())
    changed = {key for key, value in CHANGED.items()
               if preference_objective([(name, 1.0)], lp, PreferenceSettings(**{key: value}))[0].item() != base.item()}
    assert changed == set(OBJECTIVES[name].reads)


def test_the_configs_take_a_registered_name_and_refuse_an_unknown_one():
    from pydantic import ValidationError

    from alignlab.stages.offline.dpo import DPOConfig
    from alignlab.stages.online.preference import OnlineDPOConfig

    assert DPOConfig(model="m", data="d", loss="apo_zero").loss == "apo_zero"
    assert OnlineDPOConfig(model="m", prompts="p", reward={"type": "gold", "task": "sentiment"}, loss="apo_down").loss == "apo_down"
    with pytest.raises(ValidationError, match="apo_zero"):  # the error lists the registry's names
        DPOConfig(model="m", data="d", loss="apo_up")
    with pytest.raises(ValidationError):  # reference-free objectives are not online pair losses
        OnlineDPOConfig(model="m", prompts="p", reward={"type": "gold", "task": "sentiment"}, loss="simpo")
