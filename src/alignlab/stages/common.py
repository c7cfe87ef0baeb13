"""What every stage shares: its config base, runtime (device, processes), and how it finishes.

A stage writes only into its own directory. It validates its inputs before creating anything,
writes `model/` and `metrics.json` atomically, and writes `done.json` last: a directory without
`done.json` is an unfinished stage that the next run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from alignlab.train.checkpoint import write_text_atomic
from alignlab.train.distributed import Dist, barrier, init_distributed, pick_device

DONE = "done.json"
METRICS = "metrics.json"


class StageConfig(BaseModel):
    """Base of every stage's settings: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def runtime(device_name: str) -> tuple[torch.device, Dist]:
    device = pick_device(device_name)
    dist = init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device, dist


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=float) + "\n")


def config_hash(config: BaseModel) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """Content hash of a data file or directory (names, sizes and bytes), for resume checks."""
    p = Path(str(path).split("::")[0])
    h = hashlib.sha256()
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def finish(out: Path, config: BaseModel, metrics: dict, dist: Dist = Dist()) -> dict:
    """Write metrics.json, then done.json (the stage's completion mark)."""
    if dist.is_main:
        write_json(out / METRICS, metrics)
        write_json(out / DONE, {"config_hash": config_hash(config)})
    barrier(dist)
    return metrics


def done_hash(out: Path) -> str | None:
    path = out / DONE
    return json.loads(path.read_text())["config_hash"] if path.exists() else None


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
