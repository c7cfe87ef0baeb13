"""The training engine both drivers share: a run's state and its one optimizer step.

`TrainState` holds what a checkpoint restores (model, trainable extras, optimizer, schedule, RNG,
stateful helpers such as a KL controller) and knows how to `resume()` and `save()`.
`optimizer_step` turns one step's micro-batches into one update: it normalises by the whole step's
weight over every process, accumulates gradients, sums them over the processes, clips, stops on a
non-finite loss and steps. The offline loop (`loop.train`) and the online loop
(`online.run_online`) are short drivers around these two.

Gradients are summed over processes by one flat all-reduce after the micro-batches (not DDP's
hooks): every loss is already a share of the global step's, so the sum is the global gradient,
and a process with nothing to do in a step simply adds zeros. With `parallel: fsdp` the model is
sharded when the state is created (`sharding.py`): its gradients are summed shard by shard in the
backward pass, and only modules kept whole beside it (a value head) go through the all-reduce.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LambdaLR

from alignlab.train.activations import use_gradient_checkpointing
from alignlab.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from alignlab.train.distributed import (
    Dist,
    all_gather_objects,
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_parameters,
    busiest,
)
from alignlab.train.optim import make_optimizer
from alignlab.train.schedule import make_scheduler
from alignlab.train.sharding import clip_grad_norm, is_sharded, shard
from alignlab.train.settings import OnlineSettings, TrainSettings

Batch = dict[str, Tensor]
PartLoss = Callable[[Batch, Tensor], tuple[Tensor, dict[str, Tensor]]]
"""(micro-batch, the step's total weight over every process) -> (the micro-batch's part of the step's
loss, its metrics averaged over it)"""

# Settings that change how a run is watched or stored, never its numbers: a resume may change them.
NOT_IN_RUN_KEY = frozenset({"log_every", "eval_every", "save_every", "device", "gradient_checkpointing",
                            "keep_checkpoints", "log_samples"})


class NonFiniteLossError(RuntimeError):
    """Raised when the loss or gradient norm stops being finite; nothing broken is written."""


class ResumeMismatchError(RuntimeError):
    """Raised when a checkpoint was written for different data or settings."""


def run_key(settings, *parts: Any) -> str:
    """A run's identity for resume checks: its data and every setting that changes its numbers."""
    payload = json.dumps([*parts, settings.model_dump(exclude=set(NOT_IN_RUN_KEY))])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class TrainState:
    """Everything a checkpoint holds, and the process group it trains in."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    out_dir: Path
    key: str
    settings: TrainSettings | OnlineSettings
    extras: dict[str, nn.Module] = field(default_factory=dict)
    """modules saved beside the model: a value head (trained), a synced reference (changed by a hook)"""
    stateful: dict[str, Any] = field(default_factory=dict)
    """objects with state_dict()/load_state_dict() that the run changes (a KL controller)"""
    dist: Dist = Dist()
    device: torch.device = torch.device("cpu")
    name: str = "train"
    trainable: list[nn.Parameter] = field(default_factory=list)
    """the parameters the optimizer steps: their gradients are summed over processes and clipped"""
    whole: list[nn.Parameter] = field(default_factory=list)
    """the trainable parameters that are not shards (all of them without FSDP): their gradients go
    through the engine's all-reduce, a shard's are reduced in the backward pass"""

    @classmethod
    def create(cls, model: nn.Module, settings: TrainSettings | OnlineSettings, *, total_steps: int,
               warmup_steps: int, out_dir: Path, key: str, extras: dict[str, nn.Module] | None = None, stateful: dict[str, Any] | None = None,
               dist: Dist = Dist(), device: torch.device = torch.device("cpu"), name: str = "train") -> "TrainState":
        extras = extras or {}
        trainable = [p for m in (model, *extras.values()) for p in m.parameters() if p.requires_grad]
        broadcast_parameters(trainable, dist)  # frozen weights: the same files everywhere
        use_gradient_checkpointing(model, settings.gradient_checkpointing)
        if settings.parallel == "fsdp" and dist.enabled:
            _check_shardable(model, extras, name, offload_from=device if settings.cpu_offload else None)
            bf16 = settings.precision == "bf16" and device.type == "cuda"
            shard(model, param_dtype=torch.bfloat16 if bf16 else None, cpu_offload=settings.cpu_offload)
            # the model's parameters are now this process's shards; modules beside it stay whole
            trainable = [p for m in (model, *extras.values()) for p in m.parameters() if p.requires_grad]
        optimizer = make_optimizer(trainable, settings)
        scheduler = make_scheduler(optimizer, total_steps, warmup_steps, settings.schedule)
        whole = [p for p in trainable if not isinstance(p, DTensor)]
        return cls(model, optimizer, scheduler, out_dir, key, settings, extras, stateful or {}, dist, device, name,
                   trainable, whole)

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"

    def autocast(self):
        if self.settings.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def resume(self) -> dict | None:
        """Restore the newest checkpoint; its meta, or None when there is none to resume."""
        found = latest_checkpoint(self.checkpoints)
        if found is None:
            return None
        meta = load_checkpoint(found, self.model, self.optimizer, self.scheduler, self.extras)
        if meta.get("key") != self.key:
            raise ResumeMismatchError(
                f"{found} was written for other data or settings; delete {self.checkpoints} to start over")
        for part, obj in self.stateful.items():
            obj.load_state_dict(meta["state"][part])
        return meta

    def save(self, step: int, meta: dict, *, final: bool) -> None:
        """Every process calls it: process 0 writes what all hold alike, each its shards when sharded.
        The final checkpoint leaves out the optimizer's state: nothing resumes training from it."""
        meta = {"key": self.key, **meta, "state": {part: obj.state_dict() for part, obj in self.stateful.items()}}
        save_checkpoint(self.checkpoints, step, self.model, self.optimizer, self.scheduler, meta, self.extras,
                        with_optimizer=not final, dist=self.dist)


def optimizer_step(state: TrainState, micro_batches: list[Batch], weights: list[Tensor], part_loss: PartLoss, *,
                   where: str, hint: str, spare: Callable[[], Batch] | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """One update from this process's micro-batches; returns the step's figures over every process
    (the loss and each metric, weighted by the micro-batches' shares) and the gradient norm.

    `weights[i]` is micro-batch i's size in the units its loss averages over (tokens, pairs,
    samples); the normaliser is their sum over the processes, so the micro-batch size and the
    process count change memory, never the update. `where` and `hint` finish the error a non-finite
    loss raises ("at step 12", "Lower the learning rate or check the data.").

    A sharded model needs every process to run as many forwards as the others: one short of
    micro-batches runs zero-weighted passes, on its first micro-batch or on `spare()` when it has none."""
    dist, s = state.dist, state.settings
    local = torch.stack(weights).sum() if weights else torch.zeros((), device=state.device)  # nccl reduces on the GPU
    normaliser = all_reduce_sum(local, dist).clamp_min(1e-12)
    # counted before any forward: every process must reach this collective before the first all-gather
    most = busiest(len(micro_batches), dist, state.device) if is_sharded(state.model) else len(micro_batches)
    totals: dict[str, Tensor] = {}
    for batch, weight in zip(micro_batches, weights):
        share = weight / normaliser
        with state.autocast():
            part, metrics = part_loss(batch, normaliser)
        part.backward()
        totals["loss"] = totals.get("loss", 0) + part.detach().float()
        for k, v in metrics.items():
            if k != "loss":  # the objective is counted just above
                totals[k] = totals.get(k, 0) + v.detach().float() * share
    _zero_weighted_passes(state, most - len(micro_batches), micro_batches, part_loss, normaliser, spare)
    params = state.trainable
    all_reduce_gradients(state.whole, dist)
    totals = _sum_over_processes(totals, dist)
    grad_norm = _clip(state, params, s.max_grad_norm)
    loss = totals.get("loss", torch.zeros(()))
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        raise NonFiniteLossError(f"{state.name}: the loss became {loss.item()} (grad norm {grad_norm.item()}) at {where}; "
                                 f"stopping without writing a model. {hint}")
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    return totals, grad_norm


def _zero_weighted_passes(state: TrainState, count: int, micro_batches: list[Batch], part_loss: PartLoss,
                          normaliser: Tensor, spare: Callable[[], Batch] | None) -> None:
    """`count` forwards and backwards that add nothing, so this process joins the others' collectives."""
    for _ in range(count):
        batch = micro_batches[0] if micro_batches else spare() if spare is not None else None
        if batch is None:
            raise RuntimeError(f"{state.name}: a sharded step needs a batch on every process")
        with state.autocast():
            part, _ = part_loss(batch, normaliser)
        (part * 0.0).backward()


def _clip(state: TrainState, params: list[nn.Parameter], max_norm: float | None) -> Tensor:
    if not max_norm:
        return torch.zeros(())
    if is_sharded(state.model):
        return clip_grad_norm(params, max_norm)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _check_shardable(model: nn.Module, extras: dict[str, nn.Module], name: str, offload_from: torch.device | None) -> None:
    """What FSDP does not cover here yet, refused before any work (not a hang or a wrong result later)."""
    if offload_from is not None and offload_from.type != "cuda":
        raise ValueError(f"{name}: train.cpu_offload keeps the shards in CPU memory while a GPU computes; this run "
                         "computes on the CPU already (torch's offload needs an accelerator)")
    for part, module in extras.items():
        if sum(p.numel() for p in module.parameters()) > sum(p.numel() for p in model.parameters()) // 10:
            # a whole second model beside a sharded one would undo the memory FSDP saves (a separate critic)
            raise ValueError(f"{name}: train.parallel fsdp keeps modules beside the model whole on every process, and "
                             f"'{part}' is a model of its own (a separate critic, TR-DPO's synced reference); with PPO use "
                             "critic: shared, or train.parallel ddp")


def _sum_over_processes(totals: dict[str, Tensor], dist: Dist) -> dict[str, Tensor]:
    """Each process's share-weighted figure sums added up (a process without rows adds nothing)."""
    if not dist.enabled:
        return totals
    gathered = all_gather_objects({k: float(v) for k, v in totals.items()}, dist)
    keys = list(dict.fromkeys(k for part in gathered for k in part))
    return {k: torch.tensor(sum(part.get(k, 0.0) for part in gathered)) for k in keys}
