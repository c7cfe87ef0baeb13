"""The online loop shared by PPO, RLOO, GRPO and online DPO: collect, then update, repeat.

Each iteration the stage's `collect(iteration)` samples from the current policy, scores the
samples and returns the *experience*: a dict of tensors with one row per sample (right-padded
`[N, T]` ids/masks, `[N, T-1]` per-token tensors, `[N]` per-sample tensors). The loop then runs
`update_epochs` passes over shuffled minibatches of those rows, one optimizer step per minibatch,
calling the stage's `loss(micro_batch)`.

Batch sizes are the algorithm's, never a device knob: `prompts_per_iteration` prompts are sampled,
each `minibatch_size` samples make one optimizer step; `micro_batch_size` only splits a minibatch
to save memory and does not change the update (each micro-batch's mean loss is weighted by its
share of the minibatch's tokens or samples, as the stage's `weight` says).

Under torchrun every process samples its own share of each iteration's prompts (whole groups), and
each optimizer step sums the processes' gradients of a loss normalised by the global count, so the
sizes above stay global and the update is the one a single process would make on all the samples.
Rollout figures are averaged over the processes (counts are summed); process 0 writes logs and
checkpoints.

Checkpoints are written at the start of an iteration, after its rollouts passed the KL bound, so a
checkpoint always holds a policy whose samples were checked; a resumed run re-collects that
iteration with the same seed (sampling is deterministic per iteration) and goes on exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from alignlab.train.activations import use_gradient_checkpointing
from alignlab.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from alignlab.train.distributed import (
    Dist,
    all_gather_objects,
    all_reduce_gradients,
    all_reduce_sum,
    barrier,
    broadcast_parameters,
)
from alignlab.train.loop import NonFiniteLossError, ResumeMismatchError
from alignlab.train.optim import make_optimizer
from alignlab.train.progress import Progress, StepLog
from alignlab.train.schedule import make_scheduler

Experience = dict[str, Tensor]


class KLBoundError(RuntimeError):
    """The policy drifted further from the reference than the configured bound allows."""


class OnlineSettings(BaseModel):
    """How an online stage iterates and optimises. Sizes count prompts or samples, per iteration."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(100, gt=0, description="collect→update cycles")
    prompts_per_iteration: int = Field(64, gt=0)
    update_epochs: int = Field(1, gt=0, description="passes over each iteration's samples")
    minibatch_size: int = Field(64, gt=0, description="samples per optimizer step")
    micro_batch_size: int | None = Field(None, gt=0, description="memory knob only; default: minibatch_size")
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"
    log_every: int = Field(1, gt=0)
    save_every: int | None = Field(10, gt=0, description="checkpoint period in iterations")
    max_kl: float | None = Field(None, gt=0, description="stop when the rollouts' mean sequence KL to the reference exceeds this")
    snapshot_every: int | None = Field(None, gt=0, description="save the policy (HF format) under snapshots/ every N iterations")
    gradient_checkpointing: bool = Field(
        False, description="recompute the policy's activations in the backward pass: less memory, about one more forward"
    )
    keep_checkpoints: bool = Field(False, description="keep checkpoints/ after the model is written")
    log_samples: int = Field(4, ge=0, description="samples (prompt, completion, reward) written to samples.jsonl each "
                             "iteration, and as many from the final policy; 0: none")


@dataclass
class OnlineStage:
    """What an algorithm supplies to the loop."""

    collect: Callable[[int], tuple[Experience, dict[str, float]]]
    """iteration -> (experience rows, rollout metrics such as reward and kl)"""
    loss: Callable[[Experience], tuple[Tensor, dict[str, Tensor]]]
    """micro-batch -> (its mean loss, metrics)"""
    weight: Callable[[Experience], Tensor] = field(default=lambda b: torch.tensor(float(len(next(iter(b.values()))))))
    """a micro-batch's size in the units its loss averages over (samples by default, tokens for token means)"""
    after_iteration: Callable[[int, dict[str, float]], dict[str, float]] | None = None
    """runs after each update (e.g. the adaptive KL controller); may add figures to the log"""
    state: dict[str, Any] = field(default_factory=dict)
    """objects with state_dict()/load_state_dict() saved in checkpoints (e.g. the KL controller)"""
    recent_samples: Callable[[int], list[dict]] | None = None
    """n -> up to n of the last collected samples as {prompt, completion, reward}, for samples.jsonl"""
    fresh_samples: Callable[[int], list[dict]] | None = None
    """n -> n new samples from the current policy (the final one's, after the last update)"""


def _trim(batch: Experience) -> Experience:
    """Drop the padding columns every row of a micro-batch shares (rows are right-padded)."""
    if "attention_mask" not in batch:
        return batch
    width = batch["attention_mask"].shape[1]
    used = int(batch["attention_mask"].sum(1).max())
    if used == width:
        return batch
    out = {}
    for key, value in batch.items():
        if value.dim() >= 2 and value.shape[1] == width:
            out[key] = value[:, :used]
        elif value.dim() >= 2 and value.shape[1] == width - 1:
            out[key] = value[:, : used - 1]
        else:
            out[key] = value
    return out


def _rows(experience: Experience, index: Tensor) -> Experience:
    return {k: v[index] for k, v in experience.items()}


def _key(settings: OnlineSettings, extra: str) -> str:
    payload = json.dumps([settings.model_dump(exclude={"log_every", "save_every", "device", "gradient_checkpointing",
                                                       "log_samples", "keep_checkpoints"}), extra])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_online(
    policy: nn.Module,
    stage: OnlineStage,
    settings: OnlineSettings,
    out_dir: Path,
    *,
    device: torch.device,
    expected_samples: int,
    extra_modules: dict[str, nn.Module] | None = None,
    data_key: str = "",
    name: str = "online",
    save_snapshot: Callable[[Path], None] | None = None,
    dist: Dist = Dist(),
) -> dict:
    """Run `settings.iterations` collect→update cycles; returns the last logged figures.

    With `settings.snapshot_every`, `save_snapshot(dir)` writes the policy to
    `snapshots/iter-NNNNN` (the overoptimisation view evaluates them)."""
    s = settings
    _check_divisible(s, dist, name)
    extra_modules = extra_modules or {}
    params = [p for m in (policy, *extra_modules.values()) for p in m.parameters()]
    trainable = [p for p in params if p.requires_grad]
    broadcast_parameters(trainable, dist)  # frozen weights come from the same files on every process
    use_gradient_checkpointing(policy, s.gradient_checkpointing)
    optimizer = make_optimizer(params, s)
    steps_per_iteration = s.update_epochs * math.ceil(expected_samples / s.minibatch_size)
    total_steps = s.iterations * steps_per_iteration
    scheduler = make_scheduler(optimizer, total_steps, int(s.warmup_ratio * total_steps), s.schedule)
    ckpt_root = out_dir / "checkpoints"
    key = _key(s, data_key)

    start, resumed_before_update = 0, False
    found = latest_checkpoint(ckpt_root)
    if found is not None:
        meta = load_checkpoint(found, policy, optimizer, scheduler, extra_modules)
        if meta.get("key") != key:
            raise ResumeMismatchError(f"{found} was written for other data or settings; delete {ckpt_root} to start over")
        for part, obj in stage.state.items():
            obj.load_state_dict(meta["state"][part])
        start, resumed_before_update = meta["iteration"], not meta.get("finished", False)
        if meta.get("finished"):
            start = s.iterations

    log = StepLog(out_dir / "log.jsonl", resume_step=start) if dist.is_main else None
    show = dist.is_main and s.log_samples > 0 and stage.recent_samples is not None
    # what the policy says, readable as it trains; a resumed run drops the lines past its checkpoint
    samples_log = StepLog(out_dir / "samples.jsonl", resume_step=start, tensorboard=False) if show else None
    bar = Progress(s.iterations, start, name) if dist.is_main else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if s.precision == "bf16" else contextlib.nullcontext()
    micro = s.micro_batch_size or s.minibatch_size
    last: dict = {}
    for iteration in range(start, s.iterations):
        tick = time.perf_counter()
        with autocast:  # rollout at the training precision, as the update sees it (and as TRL's generate runs)
            experience, figures = stage.collect(iteration)
        figures, n = _global_figures(figures, _count(experience), dist)
        rollout_s = time.perf_counter() - tick
        if samples_log is not None:
            for record in stage.recent_samples(s.log_samples):
                samples_log.write({"step": iteration + 1, **record})
        if s.max_kl is not None and figures.get("kl", 0.0) > s.max_kl:
            kept = latest_checkpoint(ckpt_root)
            raise KLBoundError(
                f"{name}: mean sequence KL to the reference reached {figures['kl']:.3f} at iteration {iteration + 1}, "
                f"past max_kl={s.max_kl}; stopped before updating on it. "
                + (f"The last good checkpoint is kept: {kept}." if kept else "No checkpoint was written yet.")
                + " Lower the learning rate or raise the KL coefficient; rerunning resumes from the checkpoint."
            )
        save_now = s.save_every and iteration % s.save_every == 0 and not (resumed_before_update and iteration == start)
        if save_now and iteration > 0:
            _save(ckpt_root, iteration, policy, optimizer, scheduler, key, stage, extra_modules, dist, finished=False)

        tick = time.perf_counter()
        update = _update(policy, experience, stage, s, optimizer, scheduler, autocast, micro, iteration, trainable,
                         name, device, dist)
        update_s = time.perf_counter() - tick
        if stage.after_iteration is not None:
            figures = {**figures, **stage.after_iteration(iteration, figures)}
        done = iteration + 1
        record = {"step": done, **figures, **update, "lr": scheduler.get_last_lr()[0], "samples": n,
                  "rollout_s": rollout_s, "update_s": update_s, "samples_per_s": n / max(rollout_s + update_s, 1e-9)}
        if log is not None and (done % s.log_every == 0 or done == s.iterations):
            log.write(record)
            bar.update(done, f"reward {figures.get('reward', float('nan')):.3f} kl {figures.get('kl', float('nan')):.2f}")
        last = record
        if save_snapshot is not None and s.snapshot_every and done % s.snapshot_every == 0:
            if dist.is_main:
                save_snapshot(out_dir / "snapshots" / f"iter-{done:05d}")
            barrier(dist)
    if samples_log is not None and stage.fresh_samples is not None and start < s.iterations:
        for record in stage.fresh_samples(s.log_samples):
            samples_log.write({"step": s.iterations, "final": True, **record})
    _save(ckpt_root, s.iterations, policy, optimizer, scheduler, key, stage, extra_modules, dist, finished=True)
    if not last:
        last = _last_logged(out_dir / "log.jsonl")
    if log is not None:
        log.close()
        bar.close()
    if samples_log is not None:
        samples_log.close()
    return {"train": last, "iterations": s.iterations}


def _update(policy, experience, stage, s, optimizer, scheduler, autocast, micro, iteration, params, name, device,
            dist: Dist) -> dict:
    """`update_epochs` passes of shuffled minibatches; returns the mean of each figure over steps.
    `params` are the trainable parameters (their gradients are reduced and clipped).

    Each process takes its own rows, `minibatch_size / world_size` of them per step; a process that
    runs out of rows before the others joins the remaining steps with nothing (zero gradients)."""
    n = _count(experience)
    local_size = s.minibatch_size // dist.world_size
    steps_per_epoch = max(all_gather_objects(math.ceil(n / local_size), dist))
    sums: dict[str, float] = {}
    steps = 0
    generator = torch.Generator().manual_seed(s.seed * 1_000_003 + iteration + 104_729 * dist.rank)
    policy.train()
    for _ in range(s.update_epochs):
        order = torch.randperm(n, generator=generator)
        for step in range(steps_per_epoch):
            rows = order[step * local_size : (step + 1) * local_size]
            micro_batches = [{k: v.to(device) for k, v in _trim(_rows(experience, rows[i : i + micro])).items()}
                             for i in range(0, len(rows), micro)]
            weights = [stage.weight(b).float() for b in micro_batches]
            local = (torch.stack(weights).sum() if weights else torch.zeros(())).to(device)  # nccl reduces on the GPU
            normaliser = all_reduce_sum(local, dist).clamp_min(1e-12)
            totals: dict[str, Tensor] = {}
            for batch, weight in zip(micro_batches, weights):
                share = weight / normaliser
                with autocast:
                    loss, metrics = stage.loss(batch)
                (loss * share).backward()
                totals["loss"] = totals.get("loss", 0) + loss.detach().float() * share
                for k, v in metrics.items():
                    if k != "loss":  # counted just above
                        totals[k] = totals.get(k, 0) + v.detach().float() * share
            all_reduce_gradients(params, dist)
            totals = _sum_over_processes(totals, dist)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm) if s.max_grad_norm else torch.zeros(())
            if not (torch.isfinite(totals["loss"]) and torch.isfinite(grad_norm)):
                raise NonFiniteLossError(
                    f"{name}: the loss became {totals['loss'].item()} (grad norm {grad_norm.item()}) at iteration "
                    f"{iteration + 1}; stopping without writing a model. Lower the learning rate or check the reward."
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            totals["grad_norm"] = grad_norm.detach().float()
            for k, v in totals.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            steps += 1
    return {k: v / max(steps, 1) for k, v in sums.items()}


def _save(root, iteration, policy, optimizer, scheduler, key, stage, extra_modules, dist: Dist, finished: bool) -> None:
    """Process 0 writes (every replica holds the same state); the others wait for it."""
    if dist.is_main:
        meta = {"key": key, "iteration": iteration, "finished": finished,
                "state": {part: obj.state_dict() for part, obj in stage.state.items()}}
        save_checkpoint(root, iteration, policy, optimizer, scheduler, meta, extra_modules, with_optimizer=not finished)
    barrier(dist)


# Rollout figures that count things: summed over the processes (the others are averaged).
COUNTED_FIGURES = frozenset({"dropped_samples", "pairs", "pairs_dropped", "pairs_identical"})


def _count(experience: Experience) -> int:
    return len(next(iter(experience.values()))) if experience else 0


def _check_divisible(s: OnlineSettings, dist: Dist, name: str) -> None:
    for key in ("prompts_per_iteration", "minibatch_size"):
        value = getattr(s, key)
        if value % dist.world_size:
            raise ValueError(f"{name}: train.{key}={value} counts over all {dist.world_size} processes and must be "
                             f"a multiple of {dist.world_size}")


def _global_figures(figures: dict[str, float], n: int, dist: Dist) -> tuple[dict[str, float], int]:
    """This iteration's rollout figures over every process: counts summed, the rest averaged with
    each process weighted by its samples (NaN, e.g. from a process left with none, is skipped)."""
    if not dist.enabled:
        return figures, n
    gathered = all_gather_objects((figures, n), dist)
    keys = list(dict.fromkeys(k for f, _ in gathered for k in f))
    out: dict[str, float] = {}
    for key in keys:
        values = [(float(f[key]), count) for f, count in gathered if key in f]
        if key in COUNTED_FIGURES:
            out[key] = sum(v for v, _ in values)
            continue
        finite = [(v, count) for v, count in values if math.isfinite(v)]
        weight = sum(count for _, count in finite)
        if weight > 0:
            out[key] = sum(v * count for v, count in finite) / weight
        else:
            out[key] = sum(v for v, _ in finite) / len(finite) if finite else float("nan")
    return out, sum(count for _, count in gathered)


def _sum_over_processes(totals: dict[str, Tensor], dist: Dist) -> dict[str, Tensor]:
    """Each process's share-weighted figure sums added up (a process without rows adds nothing)."""
    if not dist.enabled:
        return totals
    gathered = all_gather_objects({k: float(v) for k, v in totals.items()}, dist)
    keys = list(dict.fromkeys(k for part in gathered for k in part))
    return {k: torch.tensor(sum(part.get(k, 0.0) for part in gathered)) for k in keys}


def _last_logged(path: Path) -> dict:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return lines[-1] if lines else {}
