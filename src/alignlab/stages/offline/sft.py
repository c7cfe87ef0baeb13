"""Supervised fine-tuning on demonstrations: next-token NLL on the response tokens only."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pydantic import Field

from alignlab.data.collate import pad_rows
from alignlab.data.formats import load_sft
from alignlab.data.tokenize import TokenizedRow, tokenize_sft
from alignlab.losses import sft_loss
from alignlab.models import load_tokenizer, resolve_max_length
from alignlab.ops import token_logps
from alignlab.stages.blocks import EvalDataSettings, PolicySettings
from alignlab.stages.common import (
    file_fingerprint,
    finish,
    load_policy,
    runtime,
    save_trained_model,
    seed_everything,
)
from alignlab.train import StepFns, TrainSettings, train


class SFTConfig(PolicySettings, EvalDataSettings):
    data: str = Field(description="SFT dataset: prompt/completion, messages or text")
    train: TrainSettings = TrainSettings(lr=2e-5, batch_size=16, warmup_ratio=0.03)


def sft_step_fns(rows: list[TokenizedRow], pad_id: int) -> StepFns:
    """Micro-batches of padded rows; the loss is normalised by the step's response-token count."""

    def make_batch(idx: list[int]) -> dict[str, torch.Tensor]:
        return pad_rows([rows[i] for i in idx], pad_id)

    def weight(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["loss_mask"][:, 1:].sum()

    def loss(model, batch, normaliser):
        logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        return sft_loss(logps, mask, normalizer=normaliser)

    return StepFns(make_batch, weight, loss)


def eval_nll(rows: list[TokenizedRow], pad_id: int, batch_size: int = 32):
    """Held-out per-token NLL and perplexity of the response tokens."""

    def evaluate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, len(rows), batch_size):
            b = {k: v.to(device) for k, v in pad_rows(rows[start : start + batch_size], pad_id).items()}
            logps, mask = token_logps(model, b["input_ids"], b["attention_mask"], b["loss_mask"])
            total -= (logps * mask).sum().item()
            count += int(mask.sum().item())
        nll = total / max(count, 1)
        return {"nll": nll, "perplexity": math.exp(min(nll, 50.0))}

    return evaluate


def run(cfg: SFTConfig, out: Path) -> dict:
    tokenizer = load_tokenizer(cfg.model)
    max_length = resolve_max_length(cfg.model, cfg.max_length)
    rows, stats = tokenize_sft(load_sft(cfg.data), tokenizer, max_length, cfg.max_prompt_length)
    eval_rows = None
    if cfg.eval_data:
        eval_rows, _ = tokenize_sft(load_sft(cfg.eval_data), tokenizer, max_length, cfg.max_prompt_length)
    device, dist = runtime(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = load_policy(cfg.model, cfg.dtype, device, cfg.lora)
    out.mkdir(parents=True, exist_ok=True)
    result = train(
        model, [len(r) for r in rows], sft_step_fns(rows, tokenizer.pad_token_id), cfg.train, out,
        device=device, dist=dist, data_key=file_fingerprint(cfg.data), name="sft",
        eval_fn=eval_nll(eval_rows, tokenizer.pad_token_id) if eval_rows else None,
    )
    save_trained_model(model, tokenizer, out / "model", dist)
    return finish(out, cfg, {"data": stats, **result}, dist)
