"""torch.distributed set-up and collectives: data parallel under torchrun (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment; a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def exit_worker(code: int) -> None:
    """End a torchrun worker whose command has finished, without interpreter finalisation: gloo's
    worker threads can still hold the tensors of finished async work (FSDP's all-gathers), and
    freeing them while the interpreter is torn down aborted a finished worker ("terminate called
    without an active exception", exit -6, in about one sharded run in five; torch's own fix, an
    atexit destroy_process_group, did not stop it here). Everything the run wrote is closed by now."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def all_reduce_sum(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def busiest(count: int, d: Dist, device: torch.device) -> int:
    """The largest `count` over the processes (of micro-batches, chunks). A sharded model's forwards
    are collectives, so every process runs the busiest's number; this is a collective too, so every
    process calls it before its first forward."""
    value = torch.tensor(count, device=device)  # nccl reduces on the GPU
    if d.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value)


def all_gather_objects(obj, d: Dist) -> list:
    """Every process's `obj` (picklable), in rank order; `[obj]` for one process."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_parameters(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Copy rank 0's weights to every process, so the replicas start identical."""
    if d.enabled:
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)


def all_reduce_gradients(params: list[torch.nn.Parameter], d: Dist, bucket_elements: int = 1 << 25) -> None:
    """Sum every parameter's gradient over the processes, a few flat all-reduces of at most
    `bucket_elements` each (one call per bucket, not per tensor; bounded extra memory).

    A process whose share of the step was empty has no gradients (None): it contributes zeros.
    The losses are already normalised by the global count, so the sum is the global gradient.
    """
    if not d.enabled or not params:
        return
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and (size + p.numel() > bucket_elements or p.dtype != bucket[0].dtype):
            _reduce_bucket(bucket)
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    _reduce_bucket(bucket)


def _reduce_bucket(params: list[torch.nn.Parameter]) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


@contextmanager
def single_process():
    """Make `init_distributed` see a world of one inside the block (a stage process 0 runs alone)."""
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK")}
    os.environ["WORLD_SIZE"], os.environ["RANK"] = "1", "0"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def launched_rank() -> tuple[int, int]:
    """(rank, world size) as torchrun set them, before any process group exists."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def pick_device(name: str) -> torch.device:
    """'auto' takes this process's GPU under torchrun, else the first GPU, else the CPU.

    'cuda' without an index also means this process's GPU (torchrun's LOCAL_RANK, else 0), so one
    recipe serves one process or many; asking for CUDA where there is none is a clear error."""
    from alignlab.models.load import resolve_device

    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda") if name == "auto" else resolve_device(name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
