"""The one training loop every stage uses.

A stage supplies three small functions (`StepFns`): how to build a micro-batch from example
indices, how much that micro-batch weighs in the step's normaliser (tokens for SFT, pairs for DPO),
and the loss. The loop owns everything else: length-grouped batch order, gradient accumulation,
DDP, clipping, schedule, logging, periodic eval, checkpoints and exact resume.

Accumulation gives the same update as one large batch: every micro-batch's summed loss is divided
by the weight of the *whole* optimizer step (all micro-batches on all processes), so micro-batch
size and process count change memory, not the update.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from alignlab.data.collate import length_grouped_batches
from alignlab.train.activations import use_gradient_checkpointing
from alignlab.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from alignlab.train.distributed import Dist, all_reduce_sum, barrier
from alignlab.train.optim import make_optimizer
from alignlab.train.progress import Progress, StepLog
from alignlab.train.schedule import make_scheduler
from alignlab.train.settings import TrainSettings

Batch = dict[str, torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """Raised when the loss or gradient norm stops being finite; nothing broken is written."""


class ResumeMismatchError(RuntimeError):
    """Raised when a checkpoint was written for different data or settings."""


@dataclass
class StepFns:
    make_batch: Callable[[list[int]], Batch]
    weight: Callable[[Batch], torch.Tensor]
    loss: Callable[[nn.Module, Batch, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    """loss(model, batch, normaliser) -> (summed loss / normaliser, per-micro-batch mean metrics)"""
    prepare: Callable[[nn.Module, list[int], list[int], Dist], None] | None = None
    """prepare(model, step_indices, mine, dist): run on every process before each optimizer step's
    micro-batches, with the whole global batch and this process's share of it (empty when idle),
    for statistics of the whole step (KTO's reference point); it may all-reduce, once per call."""


def _fingerprint(lengths: list[int], settings: TrainSettings, extra: str) -> str:
    payload = json.dumps([lengths, settings.model_dump(exclude={"log_every", "eval_every", "save_every", "device", "gradient_checkpointing",
                                                            "keep_checkpoints"}), extra])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train(
    model: nn.Module,
    lengths: list[int],
    fns: StepFns,
    settings: TrainSettings,
    out_dir: Path,
    *,
    device: torch.device,
    dist: Dist = Dist(),
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    data_key: str = "",
    name: str = "train",
    after_step: Callable[[int], None] | None = None,
    extra_modules: dict[str, nn.Module] | None = None,
) -> dict:
    """Train `model` in place over examples `0..len(lengths)-1`; returns the last logged figures.

    `after_step(step)` runs after each optimizer step (e.g. a reference update); modules in
    `extra_modules` that it changes are saved in checkpoints and restored on resume.
    """
    s = settings
    n = len(lengths)
    if n == 0:
        raise ValueError(f"{name}: no training examples")
    steps_per_epoch = math.ceil(n / s.batch_size)
    total = s.max_steps or max(1, math.ceil(s.epochs * steps_per_epoch))
    warmup = s.warmup_steps if s.warmup_steps is not None else int(s.warmup_ratio * total)
    micro = s.micro_batch_size or s.batch_size

    use_gradient_checkpointing(model, s.gradient_checkpointing)
    optimizer = make_optimizer(model.parameters(), s)
    scheduler = make_scheduler(optimizer, total, warmup, s.schedule)
    ckpt_root = out_dir / "checkpoints"
    key = _fingerprint(lengths, s, data_key)
    start, final = 0, {}
    resumed = latest_checkpoint(ckpt_root)
    if resumed is not None:
        meta = load_checkpoint(resumed, model, optimizer, scheduler, extra_modules)
        if meta.get("key") != key:
            raise ResumeMismatchError(
                f"{resumed} was written for other data or settings; delete {ckpt_root} to start over"
            )
        start = meta["step"]
        final = {k: meta[k] for k in ("train", "eval") if k in meta}  # only the final checkpoint has them
    else:
        torch.manual_seed(s.seed)  # every rank starts its dropout stream at the same seed

    ddp = nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    log = StepLog(out_dir / "log.jsonl", resume_step=start) if dist.is_main else None
    bar = Progress(total, start, name) if dist.is_main else None
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if s.precision == "bf16" else contextlib.nullcontext()
    )
    epoch_batches: dict[int, list[list[int]]] = {}
    last: dict = {}
    tick, seen = time.perf_counter(), 0
    model.train()
    for step in range(start, total):
        epoch, index = divmod(step, steps_per_epoch)
        if epoch not in epoch_batches:
            epoch_batches = {epoch: length_grouped_batches(
                lengths, s.batch_size, seed=s.seed, epoch=epoch, shuffle=True,
                group_multiplier=32 if s.group_by_length else 1,
            )}
        # this process's share of the global batch, cut into micro-batches
        mine = epoch_batches[epoch][index][dist.rank :: dist.world_size]
        # A short last batch can leave a process without examples; it must still join DDP's gradient
        # all-reduce, so it runs one example of the batch at zero weight (adding nothing).
        idle = not mine
        if fns.prepare is not None:
            fns.prepare(model, epoch_batches[epoch][index], mine, dist)
        if idle:
            mine = epoch_batches[epoch][index][:1]
        batches = [fns.make_batch(mine[i : i + micro]) for i in range(0, len(mine), micro)]
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        weights = [fns.weight(b).to(device=device, dtype=torch.float32) * (0.0 if idle else 1.0) for b in batches]
        local = torch.stack(weights).sum() if weights else torch.zeros((), device=device)
        normaliser = all_reduce_sum(local, dist)

        totals: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            ctx = ddp.no_sync() if (dist.enabled and not sync) else contextlib.nullcontext()
            with ctx, autocast:
                loss, metrics = fns.loss(ddp, batch, normaliser)
                if idle:
                    loss = loss * 0.0
            # DDP averages gradients over processes; the loss is already a share of the global sum
            (loss * dist.world_size).backward()
            share = weights[i] / normaliser
            totals["loss"] = totals.get("loss", 0) + loss.detach()
            for k, v in metrics.items():
                if k == "loss":  # the objective is counted just above; adding a loss's own "loss" metric doubled it
                    continue
                totals[k] = totals.get(k, 0) + v.detach().float() * share
        totals = {k: all_reduce_sum(torch.as_tensor(v, device=device), dist) for k, v in totals.items()}

        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
            if s.max_grad_norm else torch.zeros(())
        )
        if not (torch.isfinite(totals["loss"]) and torch.isfinite(grad_norm)):
            raise NonFiniteLossError(
                f"{name}: the loss became {totals['loss'].item()} (grad norm {grad_norm.item()}) at step "
                f"{step + 1}; stopping without writing a model. Lower the learning rate or check the data."
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(step + 1)
        seen += len(epoch_batches[epoch][index])
        done = step + 1

        if done % s.log_every == 0 or done == total:
            now = time.perf_counter()
            last = {"step": done, "epoch": round(done / steps_per_epoch, 4), "lr": scheduler.get_last_lr()[0],
                    **{k: v.item() for k, v in totals.items()}, "grad_norm": float(grad_norm),
                    "examples_per_s": seen / max(now - tick, 1e-9)}
            tick, seen = now, 0
            if log is not None:
                log.write(last)
                bar.update(done, f"loss {last['loss']:.4f}")
        figures = None
        if eval_fn is not None and ((s.eval_every and done % s.eval_every == 0) or done == total):
            figures = _evaluate(model, eval_fn, log, done, dist)
        if done == total:
            # the final checkpoint keeps the final figures: a run killed after it (while the model is
            # written) reports them again without evaluating or logging anything twice
            final = {"train": last, **({"eval": figures} if figures is not None else {})}
        if (s.save_every and done % s.save_every == 0) or done == total:
            if dist.is_main:
                save_checkpoint(ckpt_root, done, model, optimizer, scheduler, {"key": key, **final}, extra_modules,
                                with_optimizer=done != total)
            barrier(dist)

    if "train" not in final and log is not None:  # a final checkpoint of an older version: its last line
        final["train"] = _last_logged(out_dir / "log.jsonl")
    result = {"train": final.get("train", {}), "steps": total}
    if eval_fn is not None:
        result["eval"] = final["eval"] if "eval" in final else _evaluate(model, eval_fn, log, total, dist)
    if log is not None:
        log.close()
        bar.close()
    return result


def _evaluate(model: nn.Module, eval_fn, log: StepLog | None, step: int, dist: Dist) -> dict:
    figures: dict = {}
    if dist.is_main:
        model.eval()
        with torch.no_grad():
            figures = eval_fn(model)
        model.train()
        if log is not None:
            log.write({"step": step, **{f"eval/{k}": v for k, v in figures.items()}})
    barrier(dist)
    return figures


def _last_logged(path: Path) -> dict:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    train_lines = [x for x in lines if "loss" in x]
    return train_lines[-1] if train_lines else {}
