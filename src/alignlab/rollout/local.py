"""Batched sampling from a local transformers model with its KV cache (CPU or GPU).

Prompts are left-padded into batches of similar length; generation stops at EOS or after
`max_new_tokens`. The returned completions hold the sampled ids up to and including EOS when
one was produced (no padding), ready to be scored or written as data.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import GenerationConfig, PreTrainedModel


class SamplingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0, description="0: no top-k filter")
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(64, gt=0)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompts: list[list[int]],
    settings: SamplingSettings,
    *,
    pad_id: int,
    eos_id: int,
    seed: int = 0,
) -> list[list[int]]:
    """Sample one completion per prompt (repeat a prompt to get several); deterministic per seed."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    config = GenerationConfig(
        do_sample=True, temperature=settings.temperature, top_k=settings.top_k or None,
        top_p=settings.top_p, max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id,
        eos_token_id=eos_id, use_cache=True,
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    out: list[list[int]] = [[] for _ in prompts]
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            seqs = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )[:, width:].tolist()
            for row, i in enumerate(idx):
                out[i] = _cut_at_eos(seqs[row], eos_id)
    finally:
        torch.set_rng_state(rng_state)  # sampling never shifts the caller's random stream
        model.train(was_training)
    return out


def _cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids
