"""KTO (Ethayarajh et al. 2024): preference optimisation from unpaired good/bad labels.

Data: `prompt`, `completion`, `label` (true = desirable). The reference point z₀ is estimated
from mismatched prompt–completion pairs (prompt i with the completion of the next example in the
batch), as the paper does; it is detached, so those forwards need no gradient. In training it is
estimated once per optimizer step over the whole global batch, on every process, before the
micro-batches run, so neither `micro_batch_size` nor the number of processes changes it (nor the
update); evaluation estimates it per evaluation batch. The reference model is live: a frozen copy,
or the LoRA policy with its adapter disabled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from pydantic import Field

from alignlab.data.collate import pad_rows
from alignlab.data.tokenize import TokenizedRow, tokenize_example
from alignlab.data.unpaired import UnpairedExample, load_unpaired
from alignlab.losses.kto import kto_loss, kto_reference_point, kto_weight_ratio_ok
from alignlab.models import load_tokenizer, resolve_max_length
from alignlab.ops import sequence_logps, token_logps
from alignlab.stages.blocks import EvalDataSettings, PolicySettings
from alignlab.stages.common import (
    file_fingerprint,
    finish,
    frozen_reference,
    load_policy,
    mean_over_batches,
    per_normaliser,
    runtime,
    save_trained_model,
    seed_everything,
    sharded_training,
)
from alignlab.train import StepFns, TrainSettings, train
from alignlab.train.distributed import all_reduce_sum, busiest
from alignlab.train.sharding import is_sharded

log = logging.getLogger(__name__)


class KTOConfig(PolicySettings, EvalDataSettings):
    data: str = Field(description="unpaired prompt/completion/label records")
    unpair: bool = Field(False, description="accept chosen/rejected pairs, splitting each into two examples")
    ref_model: str | None = None
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)
    allow_one_sided: bool = Field(False, description="train on data whose labels are all desirable or all undesirable")
    train: TrainSettings = TrainSettings(lr=5e-6, batch_size=16, warmup_ratio=0.1)


def _tokenize(examples: list[UnpairedExample], tokenizer, cfg: KTOConfig, max_length: int) -> list[TokenizedRow]:
    return [tokenize_example(tokenizer, e.prompt, e.completion, max_length, cfg.max_prompt_length,
                             source=e.source)[0] for e in examples]


def _split(row: TokenizedRow) -> tuple[list[int], list[int]]:
    start = row.loss_mask.index(1)
    return row.input_ids[:start], row.input_ids[start:]


def mismatched_rows(rows: list[TokenizedRow], pairs: list[tuple[int, int]], max_length: int) -> list[TokenizedRow]:
    """For each (a, b): the prompt of example a with the completion of example b."""
    out = []
    for a, b in pairs:
        prompt, _ = _split(rows[a])
        _, completion = _split(rows[b])
        completion = completion[: max(1, max_length - len(prompt))]
        out.append(TokenizedRow(prompt + completion, [0] * len(prompt) + [1] * len(completion)))
    return out


def kto_batch(rows: list[TokenizedRow], labels: torch.Tensor, idx: list[int], pad: int, max_length: int,
              mismatched: bool = True) -> dict:
    """Matched rows, and (with `mismatched`) rows pairing prompt i with the next example's completion."""
    batch = pad_rows([rows[i] for i in idx], pad)
    if mismatched:
        pairs = list(zip(idx, idx[1:] + idx[:1]))
        batch.update({f"kl_{k}": v for k, v in pad_rows(mismatched_rows(rows, pairs, max_length), pad).items()})
    batch["desirable"] = labels[torch.tensor(idx)]
    return batch


def _seq(fn, batch, prefix=""):
    logps, mask = fn(batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}loss_mask"])
    return sequence_logps(logps, mask)


def _policy(model):
    return lambda *args: token_logps(model, *args)


def kto_objective(cfg: KTOConfig, ref, z0_of_step: dict | None = None):
    """(model, batch) -> summed KTO loss. With `z0_of_step` (filled by `step_reference_point`'s
    prepare hook) z₀ is the optimizer step's; without, it is estimated on the batch's own
    mismatched rows (evaluation)."""

    def compute(model, batch):
        pol = _seq(_policy(model), batch)
        with torch.no_grad():
            ref_seq = _seq(ref.token_logps, batch)
            if z0_of_step is not None:
                z0 = z0_of_step["z0"]
            elif batch["input_ids"].shape[0] > 1:  # one example has no mismatched partner: z₀ = 0
                z0 = kto_reference_point(_seq(_policy(model), batch, "kl_"), _seq(ref.token_logps, batch, "kl_"))
            else:
                z0 = torch.zeros((), device=pol.device)
        return kto_loss(pol, ref_seq, batch["desirable"], z0, beta=cfg.beta, desirable_weight=cfg.desirable_weight,
                        undesirable_weight=cfg.undesirable_weight, reduction="sum")

    return compute


def step_reference_point(cfg: KTOConfig, ref, rows: list[TokenizedRow], pad: int, max_length: int):
    """(prepare hook for the training loop, the dict it writes the step's z₀ into).

    The mismatched pairs pair each example of the global batch with the next one in it; each
    process scores the pairs of its own examples (in chunks of the micro-batch size), and one
    all-reduce of the sum and the count gives every process the same clamped mean.
    """
    state: dict = {"z0": None}
    chunk = cfg.train.micro_batch_size or cfg.train.batch_size

    @torch.no_grad()
    def prepare(model, step: list[int], mine: list[int], dist) -> None:
        device = next(model.parameters()).device
        total, count = torch.zeros((), device=device), torch.zeros((), device=device)
        if len(step) > 1:  # one example has no mismatched partner: z₀ = 0
            partner = dict(zip(step, step[1:] + step[:1]))
            chunks = [mine[start : start + chunk] for start in range(0, len(mine), chunk)]
            # a sharded policy's forwards are collectives: a process with fewer chunks scores spare ones
            spare = _spare_chunks(model, len(chunks), dist, step[:1])
            for i, part_of_mine in enumerate(chunks + spare):
                part = [(a, partner[a]) for a in part_of_mine]
                batch = {k: v.to(device) for k, v in pad_rows(mismatched_rows(rows, part, max_length), pad).items()}
                log_ratio = _seq(_policy(model), batch) - _seq(ref.token_logps, batch)
                if i < len(chunks):
                    total += log_ratio.float().sum()
                    count += log_ratio.numel()
        total, count = all_reduce_sum(total, dist), all_reduce_sum(count, dist)
        state["z0"] = (total / count.clamp_min(1)).clamp_min(0)

    return prepare, state


def _spare_chunks(model, mine: int, dist, filler: list[int]) -> list[list[int]]:
    """Chunks to score and discard so that this process runs as many forwards as the busiest one
    (only a sharded model needs them)."""
    if not is_sharded(model):
        return []
    most = busiest(mine, dist, next(model.parameters()).device)
    return [filler] * (most - mine)


def run(cfg: KTOConfig, out: Path) -> dict:
    tokenizer = load_tokenizer(cfg.model)
    max_length = resolve_max_length(cfg.model, cfg.max_length)
    examples = load_unpaired(cfg.data, unpair=cfg.unpair)
    rows = _tokenize(examples, tokenizer, cfg, max_length)
    labels = torch.tensor([e.desirable for e in examples])
    eval_rows, eval_labels = [], torch.zeros(0, dtype=torch.bool)
    if cfg.eval_data:
        eval_ex = load_unpaired(cfg.eval_data, unpair=cfg.unpair)
        eval_rows, eval_labels = _tokenize(eval_ex, tokenizer, cfg, max_length), torch.tensor([e.desirable for e in eval_ex])
    n_good = int(labels.sum())
    if n_good in (0, len(rows)) and not cfg.allow_one_sided:
        kind = "desirable" if n_good else "undesirable"
        raise ValueError(
            f"{cfg.data}: all {len(rows)} examples are {kind}; KTO weighs desirable against undesirable ones "
            "around its reference point, so one side alone mostly pushes every example the same way. "
            "Add examples of the other label, or set allow_one_sided: true to train anyway"
        )
    if not kto_weight_ratio_ok(cfg.desirable_weight, cfg.undesirable_weight, n_good, len(rows) - n_good):
        log.warning("KTO: desirable_weight·n_desirable / (undesirable_weight·n_undesirable) is outside [1, 4/3], "
                    "the range the KTO paper recommends (%d desirable, %d undesirable)", n_good, len(rows) - n_good)
    device, dist = runtime(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = load_policy(cfg.model, cfg.dtype, device, cfg.lora)
    ref = frozen_reference(model, cfg.model, cfg.ref_model or cfg.model, cfg.lora, cfg.dtype, device,
                           shard=sharded_training(cfg.train, dist))
    pad = tokenizer.pad_token_id
    prepare, z0_of_step = step_reference_point(cfg, ref, rows, pad, max_length)
    fns = StepFns(lambda idx: kto_batch(rows, labels, idx, pad, max_length, mismatched=False),
                  lambda b: torch.tensor(b["desirable"].shape[0]),
                  per_normaliser(kto_objective(cfg, ref, z0_of_step)), prepare=prepare)
    compute = kto_objective(cfg, ref)
    out.mkdir(parents=True, exist_ok=True)
    result = train(
        model, [len(r) for r in rows], fns, cfg.train, out, device=device, dist=dist,
        data_key=file_fingerprint(cfg.data), name="kto",
        eval_fn=(lambda m: mean_over_batches(
            m, len(eval_rows), lambda idx: kto_batch(eval_rows, eval_labels, idx, pad, max_length), compute,
        )) if eval_rows else None,
    )
    save_trained_model(model, tokenizer, out / "model", dist)
    return finish(out, cfg, {"examples": len(rows), "desirable": n_good, **result}, dist)
