"""What every stage shares: its config base, runtime (device, processes), and how it finishes.

A stage writes only into its own directory. It validates its inputs before creating anything,
writes `model/` and `metrics.json` atomically, and writes `done.json` last: a directory without
`done.json` is an unfinished stage that the next run resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from alignlab.files import write_text_atomic
from alignlab.train.distributed import Dist, barrier, init_distributed, pick_device

DONE = "done.json"
METRICS = "metrics.json"


class StageConfig(BaseModel):
    """Base of every stage's settings: unknown keys are errors.

    A block a stage declares with its own defaults (PPO's `train: OnlineSettings(update_epochs=4)`,
    SL-CAI's `sampling: SamplingSettings(max_new_tokens=128)`) keeps them when the user sets only
    some of its keys: `train: {lr: 1e-5}` changes the learning rate, not PPO's four epochs."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    moved: ClassVar[dict[str, str]] = {}
    """old key -> its one home now, for an error that says where a setting went"""
    stage_defaults: ClassVar[dict[str, Any]] = {}
    """a shared knob's default in this stage, where it differs from the block's (declared once there)"""

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults_under_partial_blocks(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for old, new in cls.moved.items():
            if old in data:
                raise ValueError(f"`{old}` is set as `{new}` (one home per setting)")
        merged = {**cls.stage_defaults, **data}
        for name, field in cls.model_fields.items():
            given = merged.get(name)
            if isinstance(given, BaseModel) and type(given) is type(field.default):
                given = given.model_dump(exclude_unset=True)  # an object from Python: only what was set in it
            if isinstance(field.default, BaseModel) and isinstance(given, dict):
                merged[name] = deep_merge(field.default.model_dump(exclude_unset=True), given)
        return merged


def deep_merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, nested dicts merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def runtime(device_name: str) -> tuple[torch.device, Dist]:
    device = pick_device(device_name)
    dist = init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device, dist


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON: a NaN or infinite figure (a metric of nothing, a diverged value) is written as
    null, which every JSON reader takes; Python's json would write the non-standard NaN.
    `read_json` reads such a null back as NaN."""
    write_text_atomic(path, json.dumps(_finite_or_null(obj), indent=2, default=float, allow_nan=False) + "\n")


def _finite_or_null(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # tensors, numpy arrays and scalars (numpy's float32 is no float)
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


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


def save_trained_model(model, tokenizer, path: Path, dist: Dist) -> None:
    """The trained model in HF format, written by process 0; every process calls it, since a sharded
    (FSDP) model's weights are gathered from all of them first."""
    from alignlab.models import is_lora, save_pretrained_atomic
    from alignlab.models.lora import merged_state
    from alignlab.train.sharding import full_state_dict, is_sharded

    state = full_state_dict(model) if is_sharded(model) else None
    if dist.is_main:
        if state is not None and is_lora(model):  # gathered adapters: folded in by arithmetic, not by peft
            state, model = merged_state(model, state), model.get_base_model()
        save_pretrained_atomic(model, tokenizer, path, state_dict=state)
    barrier(dist)


def finish(out: Path, config: BaseModel, metrics: dict, dist: Dist = Dist()) -> dict:
    """Write metrics.json, then done.json (the stage's completion mark), then drop the checkpoints."""
    if dist.is_main:
        write_json(out / METRICS, metrics)
        write_json(out / DONE, {"config_hash": config_hash(config)})
        drop_checkpoints(out, config)
    barrier(dist)
    return metrics


def drop_checkpoints(out: Path, config: BaseModel) -> None:
    """Delete a finished stage's checkpoints unless `train.keep_checkpoints`: its model is written, so
    they only take disk (a whole model and its optimizer state). Only after done.json: a kill before
    that leaves the final checkpoint, which a rerun resumes from (writing the model again, no step
    retrained); a kill after it leaves a finished stage, which a rerun skips, deleting them then."""
    if done_hash(out) is not None and not getattr(getattr(config, "train", None), "keep_checkpoints", False):
        shutil.rmtree(out / "checkpoints", ignore_errors=True)


@contextmanager
def no_empty_directory_on_failure(out: Path, cleans: bool = True) -> Iterator[bool]:
    """Run a stage in `out`, yielding whether it existed before. When the stage fails and `out` is
    new, an `out` holding no file is removed: a later run says "running", not "resuming" nothing.
    `cleans=False` on the processes that must leave the file system to process 0."""
    existed = out.exists()
    try:
        yield existed
    except BaseException:
        if cleans and not existed and out.is_dir() and not any(p.is_file() for p in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def record_wall_time(out: Path, seconds: float) -> None:
    """Add the stage's wall time to done.json (written by a recipe run; a resumed stage counts its last run)."""
    path = out / DONE
    if path.exists():
        write_json(path, {**json.loads(path.read_text()), "wall_seconds": round(seconds, 2)})


def wall_time(out: Path) -> float | None:
    path = out / DONE
    return json.loads(path.read_text()).get("wall_seconds") if path.exists() else None


def read_json(path: Path) -> Any:
    """What `write_json` wrote, a null read as NaN: it was a figure that was NaN or infinite, and
    readers do arithmetic and plots on figures."""
    return _null_as_nan(json.loads(Path(path).read_text()))


def stage_metrics(stage_dir: str | Path) -> dict:
    """A finished stage's metrics.json (an earlier stage's figures, read by report stages)."""
    path = Path(stage_dir) / METRICS
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {stage_dir} a finished stage directory?")
    return read_json(path)


def _null_as_nan(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _null_as_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_null_as_nan(v) for v in obj]
    return math.nan if obj is None else obj


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


def per_normaliser(compute):
    """Turn `compute(model, batch) -> (summed loss, metrics)` into the loop's loss function."""

    def loss(model, batch, normaliser):
        value, metrics = compute(model, batch)
        return value / normaliser, metrics

    return loss


def mean_over_batches(model, n: int, make_batch, compute, batch_size: int = 32) -> dict[str, float]:
    """Example-weighted means of `compute`'s loss and metrics over examples 0..n-1 (for evaluation)."""
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        batch = {k: v.to(device) for k, v in make_batch(idx).items()}
        value, metrics = compute(model, batch)
        metrics = {**metrics, "loss": value / len(idx)}
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v.float().mean().item() * len(idx)
    return {k: v / max(n, 1) for k, v in sums.items()}


def load_policy(path: str, dtype: str, device, lora=None):
    """The trainable causal LM, with LoRA adapters when `lora` settings are given."""
    from alignlab.models import apply_lora, load_causal_lm

    model = load_causal_lm(path, dtype=dtype, device=device)
    return apply_lora(model, lora) if lora else model


def frozen_reference(policy, policy_path: str, ref_path: str, lora, dtype: str, device, *, shard: bool = False):
    """A LoRA policy on the reference's own weights is its own reference with the adapter off
    (no second copy in memory); anything else gets a frozen copy loaded from `ref_path`, sharded
    like the policy when `shard` (see `sharded_training`): each process then holds 1/N of it, and
    every one of its forwards is a collective, run in step with the policy's."""
    from alignlab.models import AdapterDisabled, FrozenCopy

    if lora and ref_path == policy_path:
        return AdapterDisabled(policy)
    reference = FrozenCopy.from_pretrained(ref_path, dtype=dtype, device=device)
    if shard:
        from alignlab.train.sharding import shard as shard_model

        shard_model(reference.model, frozen=True)
    return reference


def sharded_training(settings, dist: Dist) -> bool:
    """Whether this run's policy will be sharded (FSDP over several processes)."""
    return settings.parallel == "fsdp" and dist.enabled
