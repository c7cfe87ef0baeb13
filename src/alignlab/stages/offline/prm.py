"""Process reward model (PRM): a token classifier that judges every step of a solution.

The model is `load_critic`'s token classifier (one logit per position, a zero-initialised head on
any causal LM or reward model). It is trained with the binary cross-entropy of `prm_loss` at the
position that ends each step (see `alignlab.data.stepwise`); with `last_only` only each solution's
last step is trained, which makes it an outcome reward model on the same data. The saved `model/`
loads back with plain transformers as an AutoModelForTokenClassification.

Reports held-out step accuracy, first-error detection and the share of correct steps (the
majority-class baseline an accuracy has to beat).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from pydantic import Field

from alignlab.data.stepwise import (
    StepExample,
    StepRow,
    load_stepwise,
    pad_step_rows,
    tokenize_stepwise,
)
from alignlab.losses.prm import prm_loss
from alignlab.models import load_tokenizer, resolve_max_length
from alignlab.models.value import load_critic
from alignlab.stages.blocks import DtypeSettings, HeldOutSettings, MaxLengthSettings, ModelSettings
from alignlab.stages.common import (
    file_fingerprint,
    finish,
    runtime,
    save_trained_model,
    seed_everything,
)
from alignlab.train import StepFns, TrainSettings, train


class PRMConfig(ModelSettings, DtypeSettings, MaxLengthSettings, HeldOutSettings):
    data: str = Field(description="step-labelled data: prompt, completions (steps), labels")
    separator: str = Field("\n", description="text after every step; the step is scored at its last token")
    last_only: bool = Field(False, description="train only each solution's last step (an outcome RM)")
    train: TrainSettings = TrainSettings(lr=1e-4, batch_size=16, warmup_ratio=0.03)


def split_examples(
    examples: list[StepExample], eval_fraction: float, seed: int,
) -> tuple[list[StepExample], list[StepExample]]:
    """(train, held-out): a seeded `eval_fraction` of the examples, at least one when it is > 0."""
    if eval_fraction <= 0 or len(examples) < 2:
        return examples, []
    count = min(len(examples) - 1, max(1, round(eval_fraction * len(examples))))
    held = set(random.Random(seed).sample(range(len(examples)), count))
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


def step_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The PRM's logit at every position, `[B, T]` in float32."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., 0].float()


def prm_step_fns(rows: list[StepRow], pad_id: int, last_only: bool) -> StepFns:
    """Micro-batches of padded rows; loss = summed BCE over trained positions / the step's count.

    The weight of a micro-batch is its number of trained positions (every scored step, or one per
    row with `last_only`), so with accumulation the update equals one big batch's mean.
    """

    def make_batch(idx: list[int]) -> dict[str, torch.Tensor]:
        return pad_step_rows([rows[i] for i in idx], pad_id)

    def weight(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Every row holds at least one scored step (tokenize_stepwise rejects any other), so with
        # last_only the count of trained positions is the number of rows.
        return torch.tensor(batch["step_mask"].shape[0]) if last_only else batch["step_mask"].sum()

    def loss(model, batch, normaliser):
        mean, metrics = prm_loss(step_logits(model, batch), batch["step_mask"], batch["step_targets"], last_only)
        # prm_loss is a mean over this micro-batch's trained positions; times their count it is a sum.
        return mean * weight(batch).to(mean.device) / normaliser, metrics

    return StepFns(make_batch, weight, loss)


def eval_prm(rows: list[StepRow], pad_id: int, last_only: bool, batch_size: int = 32):
    """Held-out figures over all rows, each batch's metric weighted by what it averages over.

    step_accuracy, positive_rate and loss are weighted by the batch's trained positions and
    first_error_detection by its rows with a wrong step, so the figures are exact pooled rates
    whatever the batch size. correct_rate is the share of trained positions labelled correct: the
    accuracy of always answering the majority class is max(correct_rate, 1 - correct_rate).
    """

    def evaluate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        sums = {"loss": 0.0, "step_accuracy": 0.0, "positive_rate": 0.0, "first_error_detection": 0.0}
        trained_total, correct_total, error_rows = 0.0, 0.0, 0.0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            b = {k: v.to(device) for k, v in pad_step_rows(chunk, pad_id).items()}
            _, metrics = prm_loss(step_logits(model, b), b["step_mask"], b["step_targets"], last_only)
            labels = [r.step_labels[-1:] if last_only else r.step_labels for r in chunk]
            trained = sum(len(x) for x in labels)
            with_error = sum(not all(r.step_labels) for r in chunk)
            for key in ("loss", "step_accuracy", "positive_rate"):
                sums[key] += metrics[key].item() * trained
            if with_error:
                sums["first_error_detection"] += metrics["first_error_detection"].item() * with_error
            trained_total += trained
            correct_total += sum(sum(x) for x in labels)
            error_rows += with_error
        figures = {k: v / max(trained_total, 1) for k, v in sums.items() if k != "first_error_detection"}
        figures["first_error_detection"] = (
            sums["first_error_detection"] / error_rows if error_rows else float("nan")
        )
        figures.update(correct_rate=correct_total / max(trained_total, 1), examples=len(rows),
                       steps=int(trained_total))
        return figures

    return evaluate


def run(cfg: PRMConfig, out: Path) -> dict:
    tokenizer = load_tokenizer(cfg.model)
    max_length = resolve_max_length(cfg.model, cfg.max_length)
    examples = load_stepwise(cfg.data)
    if cfg.eval_data:
        train_ex, eval_ex = examples, load_stepwise(cfg.eval_data)
    else:
        train_ex, eval_ex = split_examples(examples, cfg.eval_fraction, cfg.train.seed)
    rows, stats = tokenize_stepwise(train_ex, tokenizer, max_length, cfg.separator)
    eval_rows, eval_stats = (
        tokenize_stepwise(eval_ex, tokenizer, max_length, cfg.separator) if eval_ex else ([], None)
    )
    device, dist = runtime(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = load_critic(cfg.model, dtype=cfg.dtype, device=device, pad_token_id=tokenizer.pad_token_id)
    pad = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    result = train(
        model, [len(r) for r in rows], prm_step_fns(rows, pad, cfg.last_only), cfg.train, out,
        device=device, dist=dist, data_key=file_fingerprint(cfg.data), name="prm",
        eval_fn=eval_prm(eval_rows, pad, cfg.last_only) if eval_rows else None,
    )
    save_trained_model(model, tokenizer, out / "model", dist)
    metrics = {"data": stats, "eval_data": eval_stats, "train_examples": len(rows),
               "eval_examples": len(eval_rows), **result}
    return finish(out, cfg, metrics, dist)


__all__ = ["PRMConfig", "eval_prm", "prm_step_fns", "run", "split_examples", "step_logits"]
