"""The KL coefficient β of PPO-RLHF: fixed, or adapted towards a target KL.

Adaptive control follows Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences", §2.2: after each batch, with KL the measured KL(π‖π_ref) per sequence,

    e = clip(KL/target − 1, −0.2, 0.2)
    β ← β·(1 + e·n_steps/horizon)

so β grows while the policy drifts further than the target and shrinks while it stays closer;
the clip bounds how fast β can move. The paper uses target 6 nats and horizon 10,000 episodes.

The controllers live on the host: `update` takes a Python float (the KL the loop already logs
after syncing once per step). Their state is saved with a checkpoint so a resumed run continues
with the same β.
"""

from __future__ import annotations

import math

ADAPTIVE_CLIP = 0.2


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"KL coefficient beta must be a finite number >= 0, got {beta}")
    return beta


class FixedKLController:
    """β that never changes; `update` is a no-op, so both controllers drive the loop alike."""

    kind = "fixed"

    def __init__(self, beta: float):
        self.beta = _check_beta(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict:
        return {"kind": self.kind, "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, self.kind)
        self.beta = _check_beta(state["beta"])


class AdaptiveKLController:
    """β steered so the measured KL approaches `target` (Ziegler et al. 2019, §2.2).

    init_beta: starting β (the papers use 0.15–0.2 with target 6). target: the KL (nats per
    sequence) to aim for, > 0. horizon: how many episodes (samples) it takes β to change by the
    clipped error e, > 0. `update(kl, n_steps)` with n_steps = the number of samples in the batch.
    """

    kind = "adaptive"

    def __init__(self, init_beta: float, target: float, horizon: int = 10_000):
        if not (target > 0 and math.isfinite(target)):
            raise ValueError(f"target KL must be a finite number > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.beta = _check_beta(init_beta)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """β ← β·(1 + clip(KL/target − 1, ±0.2)·n_steps/horizon)."""
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise ValueError(f"cannot adapt beta to a non-finite KL ({current_kl})")
        error = min(max(current_kl / self.target - 1, -ADAPTIVE_CLIP), ADAPTIVE_CLIP)
        self.beta *= 1 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {
            "kind": self.kind, "beta": self.beta, "target": self.target, "horizon": self.horizon
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore β; target and horizon stay as configured (a resumed run may retune them)."""
        _check_kind(state, self.kind)
        self.beta = _check_beta(state["beta"])


def _check_kind(state: dict, kind: str) -> None:
    saved = state.get("kind", kind)
    if saved != kind:
        raise ValueError(
            f"the checkpoint holds a {saved} KL controller but this run configures a {kind} one"
        )


def make_kl_controller(
    beta: float, target: float | None = None, horizon: int = 10_000
) -> FixedKLController | AdaptiveKLController:
    """An adaptive controller starting at `beta` when a target KL is given, else a fixed one."""
    if target is None:
        return FixedKLController(beta)
    return AdaptiveKLController(beta, target, horizon)


__all__ = ["AdaptiveKLController", "FixedKLController", "make_kl_controller"]
