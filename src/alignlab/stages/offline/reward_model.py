"""Reward model: a scalar head on the LM trained with the Bradley–Terry loss on pairs or rankings.

Reports held-out pairwise accuracy. The saved model is an AutoModelForSequenceClassification
(num_labels=1), so plain transformers loads it with its head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from alignlab.losses import bradley_terry_loss
from alignlab.models import (
    apply_lora,
    resolve_max_length,
    load_reward_model,
    load_tokenizer,
    reward_scores,
)
from alignlab.stages.blocks import HeldOutSettings, PolicySettings
from alignlab.stages.common import (
    file_fingerprint,
    finish,
    mean_over_batches,
    per_normaliser,
    runtime,
    save_trained_model,
    seed_everything,
)
from alignlab.stages.offline.pairs import labels_of, load_pair_splits, pair_batch, pair_lengths
from alignlab.train import StepFns, TrainSettings, train


class RewardModelConfig(PolicySettings, HeldOutSettings):
    data: str = Field(description="preference pairs or K-way rankings")
    margin: bool = Field(False, description="use each pair's `margin` field in the loss")
    center_coef: float = Field(0.0, ge=0)
    train: TrainSettings = TrainSettings(lr=1e-4, batch_size=32, warmup_ratio=0.03)


def _scores(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    scores = reward_scores(model, batch["input_ids"], batch["attention_mask"]).float()
    half = scores.shape[0] // 2
    return scores[:half], scores[half:]


def bt_objective(cfg: "RewardModelConfig"):
    """(model, batch) -> (summed Bradley–Terry loss, metrics incl. pairwise accuracy)."""

    def compute(model, batch):
        chosen, rejected = _scores(model, batch)
        return bradley_terry_loss(
            chosen, rejected, margin=batch["margin"] if cfg.margin else None, labels=batch["label"],
            center_coef=cfg.center_coef, reduction="sum",
        )

    return compute


def run(cfg: RewardModelConfig, out: Path) -> dict:
    tokenizer = load_tokenizer(cfg.model)
    max_length = resolve_max_length(cfg.model, cfg.max_length)
    train_ex, eval_ex, pairs, eval_pairs, stats = load_pair_splits(
        cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.train.seed, tokenizer, max_length,
        cfg.max_prompt_length,
    )
    extras = {"label": labels_of(train_ex), "margin": torch.tensor([e.margin or 0.0 for e in train_ex])}
    eval_extras = {"label": labels_of(eval_ex), "margin": torch.tensor([e.margin or 0.0 for e in eval_ex])}
    device, dist = runtime(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = load_reward_model(cfg.model, tokenizer=tokenizer, dtype=cfg.dtype, device=device)
    if cfg.lora:
        model = apply_lora(model, cfg.lora, task="reward")
    pad = tokenizer.pad_token_id
    compute = bt_objective(cfg)
    fns = StepFns(lambda idx: pair_batch(pairs, idx, pad, extras),
                  lambda b: torch.tensor(b["label"].shape[0]), per_normaliser(compute))
    out.mkdir(parents=True, exist_ok=True)
    result = train(
        model, pair_lengths(pairs), fns, cfg.train, out, device=device, dist=dist,
        data_key=file_fingerprint(cfg.data), name="reward_model",
        eval_fn=(lambda m: {**mean_over_batches(
            m, len(eval_pairs), lambda idx: pair_batch(eval_pairs, idx, pad, eval_extras), compute,
        ), "pairs": len(eval_pairs)}) if eval_pairs else None,
    )
    save_trained_model(model, tokenizer, out / "model", dist)
    return finish(out, cfg, {"data": stats, "train_pairs": len(pairs), "eval_pairs": len(eval_pairs), **result}, dist)
