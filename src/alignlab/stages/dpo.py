"""Direct preference optimisation (Rafailov et al. 2023) with label smoothing (cDPO) and soft labels.

Chosen and rejected go through the policy in one forward. The reference log-probs are by default
computed once before training and cached on disk keyed by reference model, data and settings, so
a rerun or resume does not recompute them and no reference model sits in memory while training.
`ref_mode: live` instead keeps a frozen copy (or, with LoRA, the policy with its adapter disabled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from alignlab.losses import dpo_loss
from alignlab.models import AdapterDisabled, FrozenCopy, LogpsCache, LoraSettings, apply_lora
from alignlab.models import load_causal_lm, load_tokenizer, model_fingerprint, save_pretrained_atomic
from alignlab.ops import sequence_logps, token_logps
from alignlab.stages.common import StageConfig, file_fingerprint, finish, runtime, seed_everything
from alignlab.stages.pairs import Pair, labels_of, load_pair_splits, pair_batch, pair_lengths
from alignlab.train import StepFns, TrainSettings, train


class DPOConfig(StageConfig):
    model: str
    data: str
    ref_model: str | None = Field(None, description="default: the starting model")
    eval_data: str | None = None
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    ref_mode: Literal["precompute", "live"] = "precompute"
    cache_dir: str | None = Field(None, description="where precomputed reference log-probs live; default <out>/cache")
    max_length: int = 512
    max_prompt_length: int = 256
    dtype: str = "float32"
    lora: LoraSettings | None = None
    train: TrainSettings = TrainSettings(lr=5e-6, batch_size=16, warmup_ratio=0.1)


def _policy_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    seq = sequence_logps(logps, mask)
    half = seq.shape[0] // 2
    return seq[:half], seq[half:]


@torch.no_grad()
def _reference_logps(ref, pairs: list[Pair], pad: int, device, batch_size: int = 32) -> dict[str, torch.Tensor]:
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        idx = list(range(start, min(start + batch_size, len(pairs))))
        b = {k: v.to(device) for k, v in pair_batch(pairs, idx, pad, {}).items()}
        logps, mask = ref.token_logps(b["input_ids"], b["attention_mask"], b["loss_mask"])
        seq = sequence_logps(logps, mask).float().cpu()
        chosen.append(seq[: len(idx)])
        rejected.append(seq[len(idx) :])
    return {"ref_chosen": torch.cat(chosen), "ref_rejected": torch.cat(rejected)}


def _dpo_fns(cfg: DPOConfig, pairs, extras, pad, live_ref, soft: bool) -> StepFns:
    def loss(model, batch, normaliser):
        pc, pr = _policy_logps(model, batch)
        if live_ref is not None:
            with torch.no_grad():
                logps, mask = live_ref.token_logps(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
                seq = sequence_logps(logps, mask)
                batch = {**batch, "ref_chosen": seq[: pc.shape[0]], "ref_rejected": seq[pc.shape[0] :]}
        value, metrics = dpo_loss(
            pc, pr, batch["ref_chosen"], batch["ref_rejected"], beta=cfg.beta,
            label_smoothing=cfg.label_smoothing, labels=batch["label"] if soft else None, reduction="sum",
        )
        return value / normaliser, metrics

    return StepFns(lambda idx: pair_batch(pairs, idx, pad, extras), lambda b: torch.tensor(b["label"].shape[0]), loss)


def dpo_eval(pairs, extras, pad, beta: float, batch_size: int = 32):
    def evaluate(model) -> dict[str, float]:
        device = next(model.parameters()).device
        sums: dict[str, float] = {}
        for start in range(0, len(pairs), batch_size):
            idx = list(range(start, min(start + batch_size, len(pairs))))
            b = {k: v.to(device) for k, v in pair_batch(pairs, idx, pad, extras).items()}
            pc, pr = _policy_logps(model, b)
            _, m = dpo_loss(pc, pr, b["ref_chosen"], b["ref_rejected"], beta=beta, reduction="sum")
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v.float().mean().item() * len(idx)
        return {k: v / max(len(pairs), 1) for k, v in sums.items()}

    return evaluate


def run(cfg: DPOConfig, out: Path) -> dict:
    tokenizer = load_tokenizer(cfg.model)
    train_ex, eval_ex, pairs, eval_pairs, stats = load_pair_splits(
        cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.train.seed, tokenizer, cfg.max_length,
        cfg.max_prompt_length,
    )
    device, dist = runtime(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = load_causal_lm(cfg.model, dtype=cfg.dtype, device=device)
    if cfg.lora:
        model = apply_lora(model, cfg.lora)
    ref_path = cfg.ref_model or cfg.model
    pad = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)

    live_ref = None
    if cfg.ref_mode == "live":
        live_ref = AdapterDisabled(model) if cfg.lora and ref_path == cfg.model else \
            FrozenCopy.from_pretrained(ref_path, dtype=cfg.dtype, device=device)
        ref_train, ref_eval = {}, {}
    else:
        ref_train, ref_eval = _cached_reference(cfg, ref_path, model, pairs, eval_pairs, pad, device, out)
    extras = {"label": labels_of(train_ex), **ref_train}
    eval_extras = {"label": labels_of(eval_ex), **ref_eval}
    if live_ref is not None and eval_pairs:
        eval_extras.update(_reference_logps(live_ref, eval_pairs, pad, device))

    soft = any(e.label != 1.0 for e in train_ex)  # decided once: no host sync per step
    result = train(
        model, pair_lengths(pairs), _dpo_fns(cfg, pairs, extras, pad, live_ref, soft), cfg.train, out,
        device=device, dist=dist, data_key=file_fingerprint(cfg.data), name="dpo",
        eval_fn=dpo_eval(eval_pairs, eval_extras, pad, cfg.beta) if eval_pairs else None,
    )
    if dist.is_main:
        save_pretrained_atomic(model, tokenizer, out / "model")
    return finish(out, cfg, {"data": stats, "train_pairs": len(pairs), "eval_pairs": len(eval_pairs), **result}, dist)


def _cached_reference(cfg, ref_path, model, pairs, eval_pairs, pad, device, out):
    """Reference log-probs for train and eval pairs, from the on-disk cache or computed once."""
    key = {"ref": model_fingerprint(ref_path), "data": file_fingerprint(cfg.data),
           "eval": file_fingerprint(cfg.eval_data) if cfg.eval_data else cfg.eval_fraction,
           "seed": cfg.train.seed, "max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
           "dtype": cfg.dtype}
    cache = LogpsCache(Path(cfg.cache_dir) if cfg.cache_dir else out / "cache", key)
    if cache.exists():
        tensors = cache.load()
    else:
        if cfg.lora and ref_path == cfg.model:
            ref = AdapterDisabled(model)
        else:
            ref = FrozenCopy.from_pretrained(ref_path, dtype=cfg.dtype, device=device)
        tensors = _reference_logps(ref, pairs, pad, device)
        if eval_pairs:
            tensors.update({f"eval_{k}": v for k, v in _reference_logps(ref, eval_pairs, pad, device).items()})
        del ref
        cache.save(tensors)
    train_part = {k: v for k, v in tensors.items() if not k.startswith("eval_")}
    eval_part = {k[5:]: v for k, v in tensors.items() if k.startswith("eval_")}
    return train_part, eval_part
