"""The online loop on a toy problem, run by tests/test_distributed.py in one process and under
torchrun in two: each process collects its share of a fixed experience (rows rank::world).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/online_ddp_worker.py OUT [ROWS]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from alignlab.train.distributed import Dist, init_distributed
from alignlab.train.online import OnlineSettings, OnlineStage, run_online


def experience_of(iteration: int, rows: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + iteration)
    x = torch.randn(rows, 3, generator=g)
    return {"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(rows, generator=g),
            "w": torch.randint(1, 4, (rows,), generator=g).float()}


def run(out: Path, rows: int, dist: Dist) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)

    def collect(iteration: int):
        mine = {k: v[dist.rank :: dist.world_size] for k, v in experience_of(iteration, rows).items()}
        return mine, {"reward": float(mine["y"].mean()) if len(mine["y"]) else float("nan"), "dropped_samples": 1.0}

    def loss(b):  # weighted MSE, averaged over the micro-batch's weight: the loop reweights by share
        err = (model(b["x"]).squeeze(-1) - b["y"]) ** 2
        return (err * b["w"]).sum() / b["w"].sum(), {"abs_err": (err.sqrt() * b["w"]).sum() / b["w"].sum()}

    stage = OnlineStage(collect, loss, weight=lambda b: b["w"].sum())
    settings = OnlineSettings(iterations=3, prompts_per_iteration=8, minibatch_size=8, micro_batch_size=2,
                              update_epochs=2, lr=0.05, schedule="constant", save_every=None, device="cpu")
    run_online(model, stage, settings, out, device=torch.device("cpu"), expected_samples=rows, name="toy", dist=dist)
    return model


if __name__ == "__main__":
    out = Path(sys.argv[1])
    dist = init_distributed(torch.device("cpu"))
    model = run(out, int(sys.argv[2]) if len(sys.argv) > 2 else 8, dist)
    if dist.is_main:
        torch.save(model.state_dict(), out / "toy.pt")
