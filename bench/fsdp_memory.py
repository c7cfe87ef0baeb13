"""Memory per process, DDP against FSDP2, at 2 processes on CPU (gloo): what each process holds for
the weights, their gradients and AdamW's state after one optimizer step of alignlab's engine, and
the frozen reference of DPO / KL-regularised RL beside it (loaded as the stages load it).

    python bench/fsdp_memory.py                 # both, on a ~100M-parameter GPT-2 (vocab 16k)
    python bench/fsdp_memory.py --layers 24     # a larger one

Bytes are counted from the tensors each process holds (a DTensor's local shard, not its global
size), so the figure is exact and does not depend on the allocator; the peak RSS of each worker is
printed beside it (it also holds activations, the gathered blocks during a forward, Python and torch).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def held_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def child(parallel: str, layers: int, hidden: int, vocab: int, out: str) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from alignlab.stages.common import frozen_reference, sharded_training
    from alignlab.train.distributed import init_distributed
    from alignlab.train.engine import TrainState, optimizer_step
    from alignlab.train.settings import TrainSettings

    torch.manual_seed(0)
    dist = init_distributed(torch.device("cpu"))
    config = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=hidden // 64, n_positions=128)
    model = GPT2LMHeadModel(config)
    settings = TrainSettings(parallel=parallel, device="cpu", lr=1e-4, save_every=None)
    with tempfile.TemporaryDirectory() as tmp:
        state = TrainState.create(model, settings, total_steps=2, warmup_steps=0, out_dir=Path(tmp), key="bench",
                                  dist=dist)
        ids = torch.randint(0, vocab, (2, 64))

        def part_loss(batch, normaliser):
            return state.model(input_ids=batch["ids"], labels=batch["ids"]).loss * 2 / normaliser, {}

        optimizer_step(state, [{"ids": ids}], [torch.tensor(2.0)], part_loss, where="bench", hint="")
        shared = Path(f"{out}.reference")  # beside the results: one directory both processes see
        if dist.is_main:
            GPT2LMHeadModel(config).save_pretrained(shared)
        torch.distributed.barrier()
        reference = frozen_reference(None, "policy", str(shared), None, "float32", torch.device("cpu"),
                                     shard=sharded_training(settings, dist))
        reference.token_logps(ids, torch.ones_like(ids))  # a forward: the gathered blocks are freed after it
        reference_bytes = held_bytes(p.data for p in reference.model.parameters())
        weights = held_bytes(p.data for p in state.model.parameters())
        optimizer = held_bytes(v for s in state.optimizer.state.values() for v in s.values()
                               if isinstance(v, torch.Tensor) and v.dim() > 0)
        params = sum(p.numel() for p in model.parameters())  # global count
    result = {"rank": dist.rank, "parallel": parallel, "parameters": params, "weights_bytes": weights,
              "optimizer_bytes": optimizer, "reference_bytes": reference_bytes, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    Path(f"{out}.{dist.rank}").write_text(json.dumps(result))


def run(parallel: str, args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
                        "child", parallel, str(args.layers), str(args.hidden), str(args.vocab), out],
                       env=env, check=True, capture_output=True)
        return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=16000)
    args = parser.parse_args()
    results = {parallel: run(parallel, args) for parallel in ("ddp", "fsdp")}
    mib = 2 ** 20
    print(f"GPT-2, {args.layers} layers x {args.hidden}, vocab {args.vocab}: "
          f"{results['ddp'][0]['parameters'] / 1e6:.1f}M parameters, 2 processes (gloo, CPU)")
    for parallel, rows in results.items():
        for r in rows:
            held = r["weights_bytes"] + r["optimizer_bytes"]
            print(f"  {parallel:4s} rank {r['rank']}: weights {r['weights_bytes'] / mib:7.1f} MiB + AdamW state "
                  f"{r['optimizer_bytes'] / mib:7.1f} MiB = {held / mib:7.1f} MiB; frozen reference "
                  f"{r['reference_bytes'] / mib:6.1f} MiB; peak RSS {r['peak_rss_bytes'] / mib:7.1f} MiB")
    held = {p: max(r["weights_bytes"] + r["optimizer_bytes"] for r in rows) for p, rows in results.items()}
    rss = {p: max(r["peak_rss_bytes"] for r in rows) for p, rows in results.items()}
    ref = {p: max(r["reference_bytes"] for r in rows) for p, rows in results.items()}
    print(f"FSDP / DDP per process: weights + optimizer {held['fsdp'] / held['ddp']:.3f}, frozen reference "
          f"{ref['fsdp'] / ref['ddp']:.3f}, peak RSS {rss['fsdp'] / rss['ddp']:.3f}")


if __name__ == "__main__":
    main()
