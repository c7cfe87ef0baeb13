"""Offline preference optimisation: DPO (Rafailov et al. 2023) and its family, chosen by name.

Objectives (`loss`, the registry in `losses/preference.py`): sigmoid (DPO; with `label_smoothing`
it is cDPO; soft `label`s per pair), robust, hinge (SLiC), ipo, apo_zero and apo_down (APO),
simpo and orpo (no reference), nll, or a weighted list of them (`[{name: sigmoid}, {name: nll,
weight: 1.0}]` is RPO).

Chosen and rejected go through the policy in one forward. Reference strategies (`ref_mode`):
`precompute` (default) computes the reference log-probs once before training and caches them on
disk keyed by reference model, data and settings, so a rerun or resume does not recompute them
and no reference sits in memory while training; `live` keeps a frozen copy (or, with LoRA, the
policy with its adapter disabled), and with `ref_sync` the copy follows the policy (TR-DPO,
Gorbatovski et al. 2024: every N steps ref ← α·policy + (1−α)·ref); `none` for reference-free
objectives (chosen automatically when every objective is reference-free).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from alignlab.losses.preference import (
    OBJECTIVES,
    ObjectiveName,
    PairLogps,
    PreferenceSettings,
    needs_reference,
    preference_objective,
)
from alignlab.models import (
    LogpsCache,
    resolve_max_length,
    load_tokenizer,
    model_fingerprint,
)
from alignlab.ops import sequence_logps, token_logps
from alignlab.stages.blocks import HeldOutSettings, PolicySettings
from alignlab.stages.common import (
    StageConfig,
    file_fingerprint,
    finish,
    frozen_reference,
    load_policy,
    mean_over_batches,
    per_normaliser,
    runtime,
    save_trained_model,
    seed_everything,
    sharded_training,
)
from alignlab.stages.offline.pairs import (
    Pair,
    labels_of,
    load_pair_splits,
    pair_batch,
    pair_lengths,
)
from alignlab.train import StepFns, TrainSettings, train


class Term(StageConfig):
    name: ObjectiveName
    weight: float = Field(1.0, allow_inf_nan=False, description="multiplies this term in the sum")


class RefSync(StageConfig):
    every: int = Field(64, gt=0, description="steps between reference updates")
    alpha: float = Field(0.6, gt=0, le=1, description="ref <- alpha*policy + (1-alpha)*ref")


class DPOConfig(PolicySettings, HeldOutSettings):
    data: str
    ref_model: str | None = Field(None, description="default: the starting model")
    loss: ObjectiveName | list[Term] = Field("sigmoid", description="one objective, or a weighted list: "
                                             + "; ".join(f"{n}: {o.summary}" for n, o in OBJECTIVES.items()))
    beta: float | None = Field(None, gt=0, description="default: the objective's (0.1; simpo 2.0)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    tau: float = Field(0.1, gt=0, description="IPO")
    gamma: float = Field(0.5, ge=0, description="SimPO target margin")
    orpo_lambda: float = Field(0.1, gt=0)
    ipo_length_normalize: bool = False
    ref_mode: Literal["precompute", "live", "none"] | None = Field(None, description="default: precompute, or none when reference-free")
    ref_sync: RefSync | None = Field(None, description="TR-DPO reference updates (needs ref_mode live)")
    cache_dir: str | None = Field(None, description="where precomputed reference log-probs live; default <out>/cache")
    train: TrainSettings = TrainSettings(lr=5e-6, batch_size=16, warmup_ratio=0.1)

    @property
    def terms(self) -> list[tuple[str, float]]:
        return [(self.loss, 1.0)] if isinstance(self.loss, str) else [(t.name, t.weight) for t in self.loss]

    @property
    def reference(self) -> str:
        if self.ref_mode is not None:
            return self.ref_mode
        return "precompute" if needs_reference([n for n, _ in self.terms]) else "none"

    @property
    def objective_settings(self) -> PreferenceSettings:
        return PreferenceSettings(self.beta, self.label_smoothing, self.tau, self.gamma, self.orpo_lambda,
                                  self.ipo_length_normalize)

    @model_validator(mode="after")
    def _consistent(self) -> "DPOConfig":
        names = [n for n, _ in self.terms]
        if not names:
            raise ValueError("`loss` lists no objective")
        if self.reference == "none" and needs_reference(names):
            raise ValueError(f"ref_mode none, but {[n for n in names if needs_reference([n])]} need a reference")
        if self.ref_sync is not None and self.reference != "live":
            raise ValueError("ref_sync (TR-DPO) updates a live reference: set ref_mode: live")
        if self.ref_sync is not None and self.lora is not None:
            raise ValueError("ref_sync needs a separate reference copy; it does not combine with LoRA")
        return self


def _pair_logps(model, batch) -> PairLogps:
    logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    seq, tokens = sequence_logps(logps, mask), mask.sum(-1).to(logps.dtype)
    h = seq.shape[0] // 2
    return PairLogps(seq[:h], seq[h:], tokens[:h], tokens[h:], batch.get("ref_chosen"), batch.get("ref_rejected"))


@torch.no_grad()
def _ref_sequence_logps(ref, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's summed log-probs of the chosen (first half) and rejected (second half) rows."""
    logps, mask = ref.token_logps(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    seq = sequence_logps(logps, mask)
    h = seq.shape[0] // 2
    return seq[:h], seq[h:]


@torch.no_grad()
def _reference_logps(ref, pairs: list[Pair], pad: int, device, batch_size: int = 32) -> dict[str, torch.Tensor]:
    order = sorted(range(len(pairs)), key=lambda i: pair_lengths(pairs[i : i + 1])[0])  # less padding
    chosen, rejected = torch.zeros(len(pairs)), torch.zeros(len(pairs))
    for start in range(0, len(pairs), batch_size):
        idx = order[start : start + batch_size]
        b = {k: v.to(device) for k, v in pair_batch(pairs, idx, pad, {}).items()}
        ref_chosen, ref_rejected = _ref_sequence_logps(ref, b)
        chosen[idx] = ref_chosen.float().cpu()
        rejected[idx] = ref_rejected.float().cpu()
    return {"ref_chosen": chosen, "ref_rejected": rejected}


def objective_fn(cfg: DPOConfig, live_ref, soft: bool):
    """(model, batch) -> (summed loss, metrics): the policy forward, the reference, the objective."""
    settings, terms = cfg.objective_settings, cfg.terms

    def compute(model, batch):
        lp = _pair_logps(model, batch)
        if live_ref is not None:
            lp.ref_chosen, lp.ref_rejected = _ref_sequence_logps(live_ref, batch)
        return preference_objective(terms, lp, settings, labels=batch["label"] if soft else None, reduction="sum")

    return compute


def run(cfg: DPOConfig, out: Path) -> dict:
    tokenizer = load_tokenizer(cfg.model)
    max_length = resolve_max_length(cfg.model, cfg.max_length)
    train_ex, eval_ex, pairs, eval_pairs, stats = load_pair_splits(
        cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.train.seed, tokenizer, max_length,
        cfg.max_prompt_length,
    )
    soft = any(e.label != 1.0 for e in train_ex)  # decided once: no host sync per step
    if soft and not all(OBJECTIVES[n].soft_labels for n, _ in cfg.terms):
        takes = [n for n, o in OBJECTIVES.items() if o.soft_labels]
        raise ValueError(f"{cfg.data}: soft labels (`label` < 1) are taken by {', '.join(takes)} only")
    device, dist = runtime(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = load_policy(cfg.model, cfg.dtype, device, cfg.lora)
    ref_path = cfg.ref_model or cfg.model
    pad = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)

    live_ref, ref_train, ref_eval = None, {}, {}
    if cfg.reference == "live":
        # TR-DPO's synced reference is trained with the policy: kept whole (and refused under FSDP)
        live_ref = frozen_reference(model, cfg.model, ref_path, cfg.lora, cfg.dtype, device,
                                    shard=sharded_training(cfg.train, dist) and not cfg.ref_sync)
    elif cfg.reference == "precompute":
        ref_train, ref_eval = _cached_reference(cfg, ref_path, model, pairs, eval_pairs, pad, device, out, max_length)
    extras = {"label": labels_of(train_ex), **ref_train}
    eval_extras = {"label": labels_of(eval_ex), **ref_eval}

    compute = objective_fn(cfg, live_ref, soft)
    fns = StepFns(lambda idx: pair_batch(pairs, idx, pad, extras), lambda b: torch.tensor(b["label"].shape[0]),
                  per_normaliser(compute))
    eval_compute = objective_fn(cfg, live_ref, False)
    sync = _ref_sync(cfg.ref_sync, model, live_ref) if cfg.ref_sync else None
    result = train(
        model, pair_lengths(pairs), fns, cfg.train, out, device=device, dist=dist,
        data_key=file_fingerprint(cfg.data), name="dpo",
        eval_fn=(lambda m: mean_over_batches(
            m, len(eval_pairs), lambda idx: pair_batch(eval_pairs, idx, pad, eval_extras), eval_compute,
        )) if eval_pairs else None,
        after_step=sync, extra_modules={"reference": live_ref.model} if sync else None,
    )
    save_trained_model(model, tokenizer, out / "model", dist)
    return finish(out, cfg, {"data": stats, "train_pairs": len(pairs), "eval_pairs": len(eval_pairs),
                             "objective": cfg.terms, "reference": cfg.reference, **result}, dist)


def _ref_sync(sync: RefSync, policy, ref):
    """TR-DPO: every `sync.every` steps, ref ← α·policy + (1−α)·ref (α = 1 is a hard copy)."""

    @torch.no_grad()
    def after_step(step: int) -> None:
        if step % sync.every == 0:
            for p_ref, p in zip(ref.model.parameters(), policy.parameters()):
                p_ref.lerp_(p.detach().to(p_ref.dtype), sync.alpha)

    return after_step


def _cached_reference(cfg, ref_path, model, pairs, eval_pairs, pad, device, out, max_length):
    """Reference log-probs for train and eval pairs, from the on-disk cache or computed once."""
    key = {"ref": model_fingerprint(ref_path), "data": file_fingerprint(cfg.data),
           "eval": file_fingerprint(cfg.eval_data) if cfg.eval_data else cfg.eval_fraction,
           "seed": cfg.train.seed, "max_length": max_length, "max_prompt_length": cfg.max_prompt_length,
           "dtype": cfg.dtype}
    cache = LogpsCache(Path(cfg.cache_dir) if cfg.cache_dir else out / "cache", key)
    if cache.exists():
        tensors = cache.load()
    else:
        ref = frozen_reference(model, cfg.model, ref_path, cfg.lora, cfg.dtype, device)
        tensors = _reference_logps(ref, pairs, pad, device)
        if eval_pairs:
            tensors.update({f"eval_{k}": v for k, v in _reference_logps(ref, eval_pairs, pad, device).items()})
        del ref
        cache.save(tensors)
    train_part = {k: v for k, v in tensors.items() if not k.startswith("eval_")}
    eval_part = {k.removeprefix("eval_"): v for k, v in tensors.items() if k.startswith("eval_")}
    return train_part, eval_part
