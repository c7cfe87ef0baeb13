"""Shared by the stand-in engine tests (tests/) and the real vLLM tests (tests_vllm/): how far an
engine's log-probs are from the trainer's, and a seeded perturbation of weights to sync."""

from __future__ import annotations

import torch

from alignlab.ops import token_logps
from alignlab.rollout import SamplingSettings


def engine_gap(sampler, model, max_new_tokens: int = 8) -> float:
    """Largest |engine - trainer| log-prob over the engine's own samples of two prompts."""
    drawn = sampler.sample([[5, 6, 7], [8, 9, 10]], SamplingSettings(max_new_tokens=max_new_tokens), seed=1)
    n = min(len(p) + len(c) for p, c in zip(drawn.prompt_ids, drawn.completion_ids))
    ids = torch.tensor([(p + c)[:n] for p, c in zip(drawn.prompt_ids, drawn.completion_ids)])
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, 3:] = 1
    with torch.no_grad():
        trainer, _ = token_logps(model, ids, torch.ones_like(ids), loss_mask)
    return float((trainer[:, 2:] - torch.tensor([row[: n - 3] for row in drawn.logps])).abs().max())


def perturbed(model, seed: int, scale: float, only: str = ""):
    """`model` with seeded Gaussian noise added to every weight whose name contains `only`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only in name:
                p.add_(scale * torch.randn(p.shape, generator=generator).to(p.dtype))
    return model
