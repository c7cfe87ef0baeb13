"""The offline driver: for each optimizer step, build this process's micro-batches and step.

A stage supplies three small functions (`StepFns`): how to build a micro-batch from example
indices, how much that micro-batch weighs in the step's normaliser (tokens for SFT, pairs for DPO),
and the loss. The engine (`engine.py`) owns the update; this loop owns the data order (length-grouped
batches, reshuffled each epoch), logging, periodic eval, checkpoints and exact resume.

Accumulation gives the same update as one large batch: every micro-batch's summed loss is divided
by the weight of the *whole* optimizer step (all micro-batches on all processes), so micro-batch
size and process count change memory, not the update.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from alignlab.data.collate import length_grouped_batches
from alignlab.train.distributed import Dist, barrier
from alignlab.train.engine import (
    Batch,
    NonFiniteLossError,
    ResumeMismatchError,
    TrainState,
    optimizer_step,
    run_key,
)
from alignlab.train.progress import RunLog
from alignlab.train.sharding import is_sharded
from alignlab.train.settings import TrainSettings

__all__ = ["Batch", "NonFiniteLossError", "ResumeMismatchError", "StepFns", "train"]


@dataclass
class StepFns:
    make_batch: Callable[[list[int]], Batch]
    weight: Callable[[Batch], torch.Tensor]
    loss: Callable[[nn.Module, Batch, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    """loss(model, batch, normaliser) -> (summed loss / normaliser, per-micro-batch mean metrics)"""
    prepare: Callable[[nn.Module, list[int], list[int], Dist], None] | None = None
    """prepare(model, step_indices, mine, dist): run on every process before each optimizer step's
    micro-batches, with the whole global batch and this process's share of it (empty when idle),
    for statistics of the whole step (KTO's reference point); it may all-reduce. With a sharded
    model it must run as many forwards on every process (see kto.py's spare chunks)."""


@dataclass(frozen=True)
class OfflinePlan:
    """How many optimizer steps a run makes over `n` examples, and in which batches."""

    lengths: list[int]
    settings: TrainSettings

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.lengths) / self.settings.batch_size)

    @property
    def total(self) -> int:
        s = self.settings
        return s.max_steps or max(1, math.ceil(s.epochs * self.steps_per_epoch))

    @property
    def warmup(self) -> int:
        s = self.settings
        return s.warmup_steps if s.warmup_steps is not None else int(s.warmup_ratio * self.total)

    def batches(self, epoch: int) -> list[list[int]]:
        s = self.settings
        return length_grouped_batches(self.lengths, s.batch_size, seed=s.seed, epoch=epoch, shuffle=True,
                                      group_multiplier=32 if s.group_by_length else 1)


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
    if not lengths:
        raise ValueError(f"{name}: no training examples")
    plan = OfflinePlan(lengths, s)
    total = plan.total
    state = TrainState.create(model, s, total_steps=total, warmup_steps=plan.warmup, out_dir=out_dir,
                              key=run_key(s, lengths, data_key), extras=extra_modules, dist=dist, device=device,
                              name=name)
    start, final = _resume(state, s.seed)
    log = RunLog(out_dir, start, total, name, dist.is_main)
    epoch_batches: dict[int, list[list[int]]] = {}
    last: dict = {}
    tick, seen = time.perf_counter(), 0
    model.train()
    for step in range(start, total):
        epoch, index = divmod(step, plan.steps_per_epoch)
        if epoch not in epoch_batches:
            epoch_batches = {epoch: plan.batches(epoch)}
        everyone = epoch_batches[epoch][index]
        totals, grad_norm = _step(state, fns, everyone, step)
        if after_step is not None:
            after_step(step + 1)
        seen += len(everyone)
        done = step + 1

        if done % s.log_every == 0 or done == total:
            now = time.perf_counter()
            last = _training_line(state, plan, done, totals, grad_norm, examples_per_s=seen / max(now - tick, 1e-9))
            tick, seen = now, 0
            log.write(last, (done, f"loss {last['loss']:.4f}"))
        figures = None
        if eval_fn is not None and ((s.eval_every and done % s.eval_every == 0) or done == total):
            figures = _evaluate(model, eval_fn, log, done, dist)
        if done == total:
            # the final checkpoint keeps the final figures: a run killed after it (while the model is
            # written) reports them again without evaluating or logging anything twice
            final = {"train": last, **({"eval": figures} if figures is not None else {})}
        if (s.save_every and done % s.save_every == 0) or done == total:
            state.save(done, final, final=done == total)

    return _result(model, final, log, total, dist, eval_fn)


def _resume(state: TrainState, seed: int) -> tuple[int, dict]:
    """The step to start from, and the final figures when the run had finished (only the final checkpoint has them)."""
    meta = state.resume()
    if meta is None:
        torch.manual_seed(seed)  # every rank starts its dropout stream at the same seed
        return 0, {}
    return meta["step"], {k: meta[k] for k in ("train", "eval") if k in meta}


def _training_line(state: TrainState, plan: OfflinePlan, done: int, totals: dict[str, torch.Tensor],
                   grad_norm: torch.Tensor, examples_per_s: float) -> dict:
    return {"step": done, "epoch": round(done / plan.steps_per_epoch, 4), "lr": state.scheduler.get_last_lr()[0],
            **{k: v.item() for k, v in totals.items()}, "grad_norm": float(grad_norm), "examples_per_s": examples_per_s}


def _result(model: nn.Module, final: dict, log: RunLog, total: int, dist: Dist,
            eval_fn: Callable[[nn.Module], dict[str, float]] | None) -> dict:
    if "train" not in final and dist.is_main:  # a final checkpoint of an older version: its last line
        final["train"] = log.last_training_line()
    result = {"train": final.get("train", {}), "steps": total, "processes": dist.world_size}
    if eval_fn is not None:
        result["eval"] = final["eval"] if "eval" in final else _evaluate(model, eval_fn, log, total, dist)
    log.close()
    return result


def _step(state: TrainState, fns: StepFns, everyone: list[int], step: int):
    """One optimizer step over the global batch `everyone`: this process takes its share, cut into
    micro-batches (a process left without examples by a short last batch joins with nothing)."""
    dist, device = state.dist, state.device
    mine = everyone[dist.rank :: dist.world_size]
    if fns.prepare is not None:
        fns.prepare(state.model, everyone, mine, dist)
    micro = state.settings.micro_batch_size or state.settings.batch_size

    def batch_of(indices: list[int]) -> Batch:
        return {k: v.to(device) for k, v in fns.make_batch(indices).items()}

    batches = [batch_of(mine[i : i + micro]) for i in range(0, len(mine), micro)]
    weights = [fns.weight(b).to(device=device, dtype=torch.float32) for b in batches]
    return optimizer_step(state, batches, weights, lambda batch, normaliser: fns.loss(state.model, batch, normaliser),
                          where=f"step {step + 1}", hint="Lower the learning rate or check the data.",
                          spare=lambda: batch_of(everyone[:1]))


def _evaluate(model: nn.Module, eval_fn, log: RunLog, step: int, dist: Dist) -> dict:
    """Process 0 evaluates while the others wait; a sharded model's forward is a collective, so there
    every process evaluates the same examples (the same figures) and process 0 logs them."""
    figures: dict = {}
    if dist.is_main or is_sharded(model):
        model.eval()
        with torch.no_grad():
            figures = eval_fn(model)
        model.train()
    if dist.is_main:
        log.write({"step": step, **{f"eval/{k}": v for k, v in figures.items()}})
    barrier(dist)
    return figures
