"""Atomic, resumable checkpoints: weights, optimizer, scheduler, RNG states and data position.

Layout under `<stage>/checkpoints/`: complete checkpoints `step-000123/` and a `latest` file naming
one. A checkpoint is written into a hidden temporary directory and renamed into place, and
`latest` is replaced atomically afterwards, so a kill at any moment leaves either the previous or
the new checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from alignlab.files import write_text_atomic
from alignlab.models.lora import is_lora
from alignlab.train.distributed import Dist, barrier
from alignlab.train.sharding import is_sharded, load_shards, save_shards

LATEST = "latest"
SHARDS = "sharded"  # a sharded model's weights and optimizer state, one file per process


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path, step: int, model: torch.nn.Module, optimizer, scheduler, meta: dict,
    extra_modules: dict[str, torch.nn.Module] | None = None, keep: int = 1, with_optimizer: bool = True,
    dist: Dist = Dist(),
) -> Path:
    """Write checkpoint `step` under `root`, point `latest` at it, and prune older ones.

    Called by every process: process 0 writes (every replica holds the same state), except a
    sharded (FSDP) model's weights and optimizer state, which each process writes its part of into
    `sharded/` first. `with_optimizer=False` leaves out the optimizer's state (AdamW's is twice the
    weights): the end-of-training checkpoint needs none, since nothing resumes training from it."""
    name = f"step-{step:06d}"
    tmp = root / f".tmp-{name}"
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    sharded = is_sharded(model)
    if sharded:
        barrier(dist)
        save_shards(tmp / SHARDS, model, optimizer if with_optimizer else None)
    if dist.is_main:
        _write_replicated(tmp, model, optimizer, scheduler, extra_modules, with_optimizer, sharded)
        write_text_atomic(tmp / "meta.json", json.dumps({"step": step, **meta}, indent=1))
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text_atomic(root / LATEST, name)
        for old in sorted(p for p in root.glob("step-*") if p.name != name)[: max(0, _count(root) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(dist)
    return root / name


def _write_replicated(tmp: Path, model, optimizer, scheduler, extra_modules, with_optimizer: bool, sharded: bool) -> None:
    """What every process holds alike: whole weights (unless sharded), extras, schedule, RNG, optimizer."""
    if not sharded:
        save_weights(model, tmp / "model.safetensors")
    for part, module in (extra_modules or {}).items():
        save_weights(module, tmp / f"{part}.safetensors")
    state = {"scheduler": scheduler.state_dict(), "rng": rng_state(), "sharded_optimizer": sharded and with_optimizer}
    if with_optimizer and not sharded:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, tmp / "trainer_state.pt")


TRAINABLE_ONLY = "trainable-only"
BASE_FINGERPRINT = "alignlab-base"


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """A module's weights in safetensors. A LoRA model is written without its frozen base weights:
    the stage rebuilds it from the same base files before resuming, and training changes none of
    them, so a checkpoint of a 135M model's adapter is megabytes instead of the whole model. Its
    persistent buffers go with the adapter (constants in today's models; cheap to keep exact).

    Any other module is written whole, frozen parameters included: a frozen module in a checkpoint
    (TR-DPO's synced reference) is there because training changes it."""
    if not is_lora(module):
        save_model(module, str(path))
        return
    save_file(_adapter_state(module), str(path),
              metadata={"alignlab": TRAINABLE_ONLY, BASE_FINGERPRINT: frozen_fingerprint(module)})


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Restore what `save_weights` wrote into `module` (built the same way, its frozen part loaded)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    device = str(next(module.parameters()).device)
    if metadata.get("alignlab") != TRAINABLE_ONLY:
        load_model(module, str(path), device=device)
        return
    saved = metadata.get(BASE_FINGERPRINT)
    if saved is not None and saved != frozen_fingerprint(module):
        raise ValueError(f"{path}: this adapter was trained on other base weights than the model loaded now "
                         "(another --model, dtype or a base model changed since); resuming would put it on the "
                         "wrong base. Use the original model, or delete the checkpoints to start over.")
    state = load_file(str(path), device=device)
    expected = _adapter_state(module)
    unknown, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    if unknown or missing:
        raise ValueError(f"{path}: its weights do not match this model's adapter ({', '.join((unknown or missing)[:3])}); "
                         "was it written for another LoRA configuration?")
    module.load_state_dict(state, strict=False)


def _adapter_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A LoRA model's state that its base files do not hold: trainable parameters, persistent buffers."""
    persistent = module.state_dict(keep_vars=True).keys()
    tensors = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    tensors += [(name, b) for name, b in module.named_buffers() if name in persistent]
    return {name: t.detach().contiguous() for name, t in tensors}


def frozen_fingerprint(module: torch.nn.Module, samples: int = 16) -> str:
    """A cheap fingerprint of a module's frozen parameters (names, shapes, dtypes and a few values of
    each), so an adapter is never resumed onto another base model. One transfer from the device."""
    frozen = [(name, p) for name, p in module.named_parameters() if not p.requires_grad]
    h = hashlib.sha256(json.dumps([(name, list(p.shape), str(p.dtype)) for name, p in frozen]).encode())
    picks = [p.detach().reshape(-1)[:: max(1, p.numel() // samples)][:samples].float() for _, p in frozen]
    if picks:
        h.update(torch.cat(picks).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _count(root: Path) -> int:
    return sum(1 for _ in root.glob("step-*"))


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint, or None. Leftover temporary directories are ignored."""
    pointer = root / LATEST
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if (path / "meta.json").exists():
            return path
    done = sorted(p for p in root.glob("step-*") if (p / "meta.json").exists())
    return done[-1] if done else None


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer, scheduler, extra_modules: dict[str, torch.nn.Module] | None = None
) -> dict:
    """Restore everything saved by `save_checkpoint` (every process calls it); returns its meta (with `step`)."""
    state = torch.load(path / "trainer_state.pt", weights_only=True)
    if is_sharded(model):
        load_shards(path / SHARDS, model, optimizer if state.get("sharded_optimizer") else None)
    else:
        load_weights(model, path / "model.safetensors")
    for name, module in (extra_modules or {}).items():
        load_weights(module, path / f"{name}.safetensors")
    if "optimizer" in state:  # absent from the end-of-training checkpoint
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / "meta.json").read_text())
