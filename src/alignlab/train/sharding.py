"""FSDP2 sharding: each transformer block, then the whole model, split over the processes.

With `train.parallel: fsdp` every process holds 1/N of each weight, its gradient and its optimizer
state; a block's full weights exist only while that block runs (gathered before its forward and
backward, freed after). The engine stays the same: the losses are already each process's share of
the whole step's sum, so the shards' gradients are *summed* over processes (FSDP's default is the
mean), then clipped by the global norm and stepped.

Two rules follow from every forward being a collective: each process runs the same number of
forwards per step (a process short of micro-batches runs a zero-weighted one, see `engine.py`), and
anything outside training that runs the model (evaluation, the final save) runs on every process.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, as transformers names them for splitting (`_no_split_modules`)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"train.parallel fsdp: {type(model).__name__} names no transformer blocks "
                         "(`_no_split_modules`), so there is nothing to shard block by block")
    return blocks


def shard(model: nn.Module, *, param_dtype: torch.dtype | None = None, cpu_offload: bool = False,
          frozen: bool = False) -> None:
    """FSDP2 on each block and on the root, in place. `param_dtype` (bf16 on a GPU) is the dtype the
    gathered weights compute in; gradients are reduced in float32 and the shards keep the model's dtype.
    `frozen`: a model that only runs forwards (a reference) frees its root's gathered weights after each
    too (FSDP keeps a trained root's for the backward that follows)."""
    options: dict = {"reshard_after_forward": True} if frozen else {}
    if param_dtype is not None:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, **options)
    fully_shard(model, **options)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # each loss is already its share of the whole step: gradients add up over the processes
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-scaled sum


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> Tensor:
    """Clip by the global norm over every gradient, sharded (DTensor) and whole alike; returns the norm.
    A sharded gradient's norm is reduced over the processes, so every process clips by the same factor."""
    with_grad = [p for p in params if p.grad is not None]
    groups = [[p for p in with_grad if isinstance(p.grad, DTensor)], [p for p in with_grad if not isinstance(p.grad, DTensor)]]
    norms = []
    for group in filter(None, groups):
        norm = torch.nn.utils.get_total_norm([p.grad for p in group])
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    for group in filter(None, groups):
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's weights, gathered on process 0 (on the CPU); a collective: every process calls it.
    A tied weight (GPT-2's lm_head is its embedding) is kept once, under its first name, as
    transformers writes it."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    aliases = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases.add(name)
        first.setdefault(id(param), name)
    return {k: v for k, v in state.items() if k not in aliases}


# frozen weights (a LoRA model's base) come from the model's own files and never change: not written
TRAINED_ONLY = StateDictOptions(ignore_frozen_params=True, strict=False)


def _trained_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """The model's trained shards (and the optimizer's state), as `dcp` saves and loads them. torch's
    option keeps a frozen weight's tied alias (GPT-2's lm_head), so the aliases are dropped here."""
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    if optimizer is None:
        model_state, optimizer_state = get_model_state_dict(model, options=TRAINED_ONLY), None
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer, options=TRAINED_ONLY)
    state = {"model": {k: v for k, v in model_state.items() if k not in frozen}}
    if optimizer_state is not None:
        state["optimizer"] = optimizer_state
    return state


def save_shards(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Each process writes its own shards of the trained weights (and the optimizer state) into `directory`."""
    dcp.save(_trained_state(model, optimizer), checkpoint_id=str(directory))


def load_shards(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Read back what `save_shards` wrote; `optimizer` None when its state was not saved."""
    state = _trained_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(directory))
    if optimizer is None:
        set_model_state_dict(model, state["model"], options=TRAINED_ONLY)
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=TRAINED_ONLY)
