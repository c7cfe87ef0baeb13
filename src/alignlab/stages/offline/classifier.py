"""Constitutional classifiers: train the input classifier (a sequence classifier on the prompt) or
the streaming output classifier (a token classifier on prompt + response) of a guard.

`role: input` trains `guard.models.load_input_classifier` with `losses.classifier.sequence_bce`
on `harmful` labelled prompts; `role: output` trains `load_output_classifier` with
`streaming_bce` on labelled prompt + completion records: the response's label broadcast to every
response token, mixed with the loss of the running maximum (`cummax_weight`; see the loss module
for why). Both start from any causal LM; `layers` keeps its first N blocks (a cheaper guard, since
the output classifier runs on every generated token) and `lora` trains adapters instead of every
weight (the head is always trained in full).

Reports held-out loss, accuracy at threshold 0.5, ROC AUC and the harmful share (the
majority-class baseline an accuracy has to beat). The saved `model/` loads with plain transformers
(AutoModelForSequenceClassification / AutoModelForTokenClassification), cut to `layers` blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from alignlab.data.examples import SFTExample
from alignlab.data.tokenize import tokenize_prompts, tokenize_sft
from alignlab.guard.curve import roc_auc
from alignlab.guard.data import Labelled, load_labelled
from alignlab.guard.models import (
    apply_classifier_lora,
    last_token_logits,
    load_input_classifier,
    load_output_classifier,
    right_pad,
)
from alignlab.losses.classifier import running_max, sequence_bce, streaming_bce
from alignlab.models import load_tokenizer, resolve_max_length
from alignlab.stages.blocks import HeldOutSettings, PolicySettings
from alignlab.stages.common import file_fingerprint, finish, runtime, save_trained_model, seed_everything
from alignlab.stages.offline.prm import split_examples
from alignlab.train import StepFns, TrainSettings, train


class ClassifierConfig(PolicySettings, HeldOutSettings):
    role: Literal["input", "output"] = Field(description="input: scores prompts; output: scores every response token")
    data: str = Field(description="labelled records: prompt (and completion for output) with a boolean `harmful`")
    layers: int | None = Field(None, gt=0, description="keep the backbone's first N blocks (None: all)")
    cummax_weight: float = Field(0.5, ge=0, le=1, description="output: weight of the running-maximum loss")
    balance_classes: bool = Field(True, description="weigh rows so harmful and harmless ones count equally in the loss")
    train: TrainSettings = TrainSettings(lr=1e-4, batch_size=16, warmup_ratio=0.03)


def tokenize_labelled(examples: list[Labelled], target: str, tokenizer, max_length: int,
                      max_prompt_length: int) -> list[dict]:
    """Rows of token ids: `ids` (prompt, or prompt + completion with EOS), `scored` (output: 1 on
    response tokens), `harmful`."""
    labels = [float(e.harmful) for e in examples]
    if target == "input":
        rows = tokenize_prompts(examples, tokenizer, max_prompt_length)
        return [{"ids": ids, "harmful": y} for ids, y in zip(rows, labels)]
    rows, _ = tokenize_sft([SFTExample(e.prompt, e.completion, e.source) for e in examples], tokenizer,
                           max_length, max_prompt_length)
    return [{"ids": r.input_ids, "scored": r.loss_mask, "harmful": y} for r, y in zip(rows, labels)]


def class_weights(labels: list[float]) -> dict[float, float]:
    """Per-label row weights that make each label's rows weigh half of the total (mean weight 1)."""
    n, harmful = len(labels), sum(labels)
    if harmful in (0, n):
        return {0.0: 1.0, 1.0: 1.0}
    return {1.0: n / (2 * harmful), 0.0: n / (2 * (n - harmful))}


def make_batch(rows: list[dict], idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    chunk = [rows[i] for i in idx]
    ids, mask = right_pad([r["ids"] for r in chunk], pad_id)
    batch = {"input_ids": ids, "attention_mask": mask, "harmful": torch.tensor([r["harmful"] for r in chunk]),
             "weight": torch.tensor([r.get("weight", 1.0) for r in chunk])}
    if "scored" in chunk[0]:
        batch["scored"], _ = right_pad([r["scored"] for r in chunk], 0)
    return batch


def classifier_loss(target: str, cummax_weight: float):
    """(model, batch) -> (summed loss over rows, metrics), and the per-row score it decides by."""

    def compute(model, batch):
        if target == "input":
            logits = last_token_logits(model, batch["input_ids"], batch["attention_mask"])
            return sequence_bce(logits, batch["harmful"], batch.get("weight"))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., 0]
        return streaming_bce(logits, batch["scored"], batch["harmful"], cummax_weight, batch.get("weight"))

    return compute


@torch.no_grad()
def row_scores(model, batch: dict[str, torch.Tensor], target: str) -> torch.Tensor:
    """Each row's P(harmful): the prompt's, or the highest over the response's tokens (what the guard acts on)."""
    if target == "input":
        return torch.sigmoid(last_token_logits(model, batch["input_ids"], batch["attention_mask"]))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., 0]
    return torch.sigmoid(running_max(logits, batch["scored"])[:, -1])


def held_out_figures(rows: list[dict], pad_id: int, target: str, cummax_weight: float, batch_size: int = 32):
    compute = classifier_loss(target, cummax_weight)

    def evaluate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        loss, scores = 0.0, []
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                idx = list(range(start, min(start + batch_size, len(rows))))
                batch = {k: v.to(device) for k, v in make_batch(rows, idx, pad_id).items()}
                loss += compute(model, batch)[0].item()
                scores += row_scores(model, batch, target).tolist()
        model.train(was_training)
        labels = [r["harmful"] for r in rows]
        harmful = [s for s, y in zip(scores, labels) if y]
        harmless = [s for s, y in zip(scores, labels) if not y]
        return {"loss": loss / len(rows), "accuracy": sum((s >= 0.5) == bool(y) for s, y in zip(scores, labels)) / len(rows),
                "auc": roc_auc(harmful, harmless), "harmful_share": len(harmful) / len(rows), "examples": len(rows)}

    return evaluate


def run(cfg: ClassifierConfig, out: Path) -> dict:
    tokenizer = load_tokenizer(cfg.model)
    max_length = resolve_max_length(cfg.model, cfg.max_length)
    with_completion = cfg.role == "output"
    examples = load_labelled(cfg.data, with_completion)
    if cfg.eval_data:
        train_ex, eval_ex = examples, load_labelled(cfg.eval_data, with_completion)
    else:
        train_ex, eval_ex = split_examples(examples, cfg.eval_fraction, cfg.train.seed)
    rows = tokenize_labelled(train_ex, cfg.role, tokenizer, max_length, cfg.max_prompt_length)
    if cfg.balance_classes:
        weights = class_weights([r["harmful"] for r in rows])
        for r in rows:
            r["weight"] = weights[r["harmful"]]
    eval_rows = tokenize_labelled(eval_ex, cfg.role, tokenizer, max_length, cfg.max_prompt_length) if eval_ex else []
    device, dist = runtime(cfg.train.device)
    seed_everything(cfg.train.seed)
    load = load_input_classifier if cfg.role == "input" else load_output_classifier
    model = load(cfg.model, tokenizer, dtype=cfg.dtype, device=device, layers=cfg.layers)
    if cfg.lora:
        model = apply_classifier_lora(model, cfg.lora, cfg.role)
    pad = tokenizer.pad_token_id
    compute = classifier_loss(cfg.role, cfg.cummax_weight)

    def loss(model, batch, normaliser):
        value, metrics = compute(model, batch)
        return value / normaliser, metrics

    # a micro-batch weighs the sum of its rows' weights, so the step's loss is their weighted mean
    fns = StepFns(lambda idx: make_batch(rows, idx, pad), lambda b: b["weight"].sum(), loss)
    out.mkdir(parents=True, exist_ok=True)
    result = train(model, [len(r["ids"]) for r in rows], fns, cfg.train, out, device=device, dist=dist,
                   data_key=file_fingerprint(cfg.data), name=f"{cfg.role}_classifier",
                   eval_fn=held_out_figures(eval_rows, pad, cfg.role, cfg.cummax_weight) if eval_rows else None)
    save_trained_model(model, tokenizer, out / "model", dist)
    metrics = {"role": cfg.role, "train_examples": len(rows), "eval_examples": len(eval_rows),
               "train_harmful": sum(r["harmful"] for r in rows) / len(rows),
               "layers": cfg.layers, **result}
    return finish(out, cfg, metrics, dist)
