"""Online preference optimisation: pairs drawn from the policy as it trains, fed to a DPO-family loss.

- `online_dpo` (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback";
  Xiong et al. 2024, iterative DPO). Each iteration: two samples per prompt from the current
  policy, both scored by the reward source; the higher score is chosen, the lower rejected
  (pairs whose scores differ by `min_gap` or less are dropped, ties always). The reference is
  the starting model (or `ref_model`), frozen; its log-probs are computed once, in collect.
- `spin` (self-play against demonstrations) is in `spin.py`, on the pair pieces here.

Log-probabilities use the sampling temperature throughout (policy and reference alike), as the
RL stages and TRL's online DPO do: they describe the distribution the samples came from. At the
default temperature 1 this is the plain model likelihood.

Batch sizes count pairs: `minibatch_size` pairs per optimizer step, at most
`prompts_per_iteration` pairs per iteration (fewer when pairs are dropped; a linear or cosine
schedule is planned for the full count).

Experience layout: one row per pair, `pair_input_ids` / `pair_attention_mask` / `pair_loss_mask`
of shape `[N, 2, T]` (index 0 chosen, 1 rejected) and `ref_logps` `[N, 2]`. `run_online`
shuffles whole rows, so a pair never splits; its padding trim looks for an `attention_mask` key
this layout does not have, so the loss trims each micro-batch itself and runs chosen and
rejected through the policy in one forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor

from alignlab.losses.preference import (
    PairLogps,
    PreferenceSettings,
    ReferenceObjectiveName,
    preference_objective,
)
from alignlab.ops import masked_sum, sequence_logps, token_logps
from alignlab.stages.blocks import AdapterSettings
from alignlab.stages.common import file_fingerprint, finish, save_trained_model
from alignlab.stages.online.common import OnlineConfig, OnlineRun, batched_logps, rollout_batch
from alignlab.train.distributed import Dist
from alignlab.train.online import Experience, OnlineSettings, OnlineStage, run_online

PAIR_FIELDS = ("input_ids", "attention_mask", "loss_mask")


class PairLossConfig(AdapterSettings):
    """The pairwise objective both stages train with."""

    loss: ReferenceObjectiveName = Field(
        "sigmoid", description="a pairwise objective against the reference (sigmoid: DPO/SPIN): "
        + ", ".join(ReferenceObjectiveName.__args__))
    beta: float = Field(0.1, gt=0, description="KL strength β (for ipo: its τ)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO (sigmoid) or robust DPO noise rate")

    @property
    def objective(self) -> PreferenceSettings:
        return PreferenceSettings(beta=self.beta, label_smoothing=self.label_smoothing, tau=self.beta)


class OnlineDPOConfig(OnlineConfig, PairLossConfig):
    """Online DPO: the online settings (prompts, reward source, sampling, train) and the pair loss."""

    min_gap: float = Field(0.0, ge=0, description="drop pairs whose two scores differ by this much or less")


# --------------------------------------------------------------------------- pairs


def rank_pairs(scores: Tensor, min_gap: float = 0.0) -> tuple[list[int], list[int]]:
    """Indices (chosen, rejected) from scores of consecutive sample pairs [s0, s1, s2, s3, ...].

    The higher score of each pair is chosen; a pair whose scores differ by `min_gap` or less
    (a tie always) is dropped, since it says nothing about which response is better.
    """
    if scores.numel() % 2:
        raise ValueError(f"scores come in pairs; got {scores.numel()} values")
    chosen, rejected = [], []
    for i, (a, b) in enumerate(scores.view(-1, 2).tolist()):
        if abs(a - b) > min_gap:
            first_wins = a > b
            chosen.append(2 * i if first_wins else 2 * i + 1)
            rejected.append(2 * i + 1 if first_wins else 2 * i)
    return chosen, rejected


def pair_tensors(prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]],
                 pad_id: int) -> Experience:
    """Right-padded `[N, 2, T]` ids and masks of prompt+chosen (index 0) and prompt+rejected (1).

    The loss mask is 1 on completion tokens only."""
    rows = [(p, c) for p, pair in zip(prompts, zip(chosen, rejected)) for c in pair]
    width = max((len(p) + len(c) for p, c in rows), default=1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (prompt, completion) in enumerate(rows):
        end = len(prompt) + len(completion)
        ids[r, :end] = torch.tensor(prompt + completion, dtype=torch.long)
        attention[r, :end] = 1
        loss[r, len(prompt) : end] = 1
    return {f"pair_{name}": t.view(len(prompts), 2, width) for name, t in zip(PAIR_FIELDS, (ids, attention, loss))}


def flat_pairs(batch: Experience) -> dict[str, Tensor]:
    """`[N, 2, T]` pairs as `[2N, T]` rows (all chosen, then all rejected), padding columns dropped."""
    flat = {name: torch.cat([batch[f"pair_{name}"][:, 0], batch[f"pair_{name}"][:, 1]]) for name in PAIR_FIELDS}
    used = max(int(flat["attention_mask"].sum(1).max()), 2) if len(flat["input_ids"]) else 2
    return {name: t[:, :used] for name, t in flat.items()}


def _as_pairs(per_row: Tensor) -> Tensor:
    """`[2N]` values in flat_pairs order → `[N, 2]`."""
    return per_row.view(2, -1).T.contiguous()


@torch.no_grad()
def pair_sequence_logps(logps_fn: Callable, batch: Experience, device, micro: int) -> Tensor:
    """Summed response log-probs `[N, 2]` of each pair under `logps_fn(ids, attn, loss_mask) -> (logps, mask)`."""
    flat = flat_pairs(batch)
    per_token = batched_logps(lambda b: logps_fn(b["input_ids"], b["attention_mask"], b["loss_mask"])[0],
                              flat, device, micro)
    return _as_pairs(masked_sum(per_token, flat["loss_mask"][:, 1:], dim=-1))


def pair_loss_fn(policy, cfg: PairLossConfig, temperature: float, device):
    """The loss of a micro-batch of pairs: chosen and rejected through the policy in one forward."""
    terms, settings = [(cfg.loss, 1.0)], cfg.objective

    def loss(batch: Experience):
        flat = {k: v.to(device) for k, v in flat_pairs(batch).items()}
        logps, mask = token_logps(policy, flat["input_ids"], flat["attention_mask"], flat["loss_mask"], temperature)
        seq, tokens = sequence_logps(logps, mask), mask.sum(-1).to(logps.dtype)
        n, ref = len(seq) // 2, batch["ref_logps"].to(device=device, dtype=seq.dtype)
        lp = PairLogps(seq[:n], seq[n:], tokens[:n], tokens[n:], ref[:, 0], ref[:, 1])
        value, metrics = preference_objective(terms, lp, settings)
        metrics.pop("loss", None)  # run_online logs the loss itself; a second "loss" would be added to it
        return value, metrics

    return loss


def implicit_reward_figures(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> dict[str, float]:
    """Margin β·[(π_w − ref_w) − (π_l − ref_l)] of fresh pairs under the policy that drew them, and
    how often it is positive (before the update: does what was learnt carry over to new samples?)."""
    if not len(policy_logps):
        return {"rollout/margin": float("nan"), "rollout/accuracy": float("nan")}
    ratio = policy_logps - ref_logps
    margin = beta * (ratio[:, 0] - ratio[:, 1])
    return {"rollout/margin": float(margin.mean()), "rollout/accuracy": float((margin > 0).float().mean())}


@dataclass(frozen=True)
class PairRun:
    """What both stages' loops share: the policy, its tokenizer, runtime, settings and log-prob temperature."""

    policy: torch.nn.Module
    tokenizer: object
    settings: OnlineSettings
    device: torch.device
    dist: Dist
    temperature: float

    @property
    def pad(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def micro(self) -> int:  # sequences per forward when computing log-probs outside the update
        return self.settings.micro_batch_size or self.settings.minibatch_size


def finish_pair_stage(run: PairRun, stage: OnlineStage, out: Path, cfg, *, data_key: str, name: str,
                  extra: dict) -> dict:
    """Run the online loop, save model/ in HF format, and write metrics.json and done.json."""
    policy, tokenizer, settings, device, dist = run.policy, run.tokenizer, run.settings, run.device, run.dist
    out.mkdir(parents=True, exist_ok=True)
    result = run_online(policy, stage, settings, out, device=device, expected_samples=settings.prompts_per_iteration,
                        data_key=data_key, name=name,
                        save_snapshot=lambda d: save_trained_model(policy, tokenizer, d, dist), dist=dist)
    save_trained_model(policy, tokenizer, out / "model", dist)
    return finish(out, cfg, {**extra, **result}, dist)


# --------------------------------------------------------------------------- online DPO


def run_online_dpo(cfg: OnlineDPOConfig, out: Path) -> dict:
    job = OnlineRun.start(cfg)
    run = PairRun(job.policy, job.tokenizer, job.settings, job.device, job.dist, cfg.sampling.temperature)
    reference = job.reference()
    device, temperature, pad, micro = run.device, run.temperature, run.pad, run.micro

    def collect(iteration: int):
        scored = job.sample(iteration, 2)
        # one reference pass over every kept sample: the pairs' reference log-probs and the KL figure
        batch = rollout_batch(scored, pad)
        mask = batch["loss_mask"][:, 1:]
        ref_seq = masked_sum(batched_logps(
            lambda b: reference.token_logps(b["input_ids"], b["attention_mask"], b["loss_mask"], temperature)[0],
            batch, device, micro), mask, dim=-1) if len(scored.scores) else torch.zeros(0)
        policy_seq = masked_sum(batch["sampler_logps"], mask, dim=-1)
        chosen, rejected = rank_pairs(scored.scores, cfg.min_gap)
        r = scored.rollouts
        experience = pair_tensors([r.prompt_ids[i] for i in chosen], [r.completion_ids[i] for i in chosen],
                                  [r.completion_ids[i] for i in rejected], pad)
        experience["ref_logps"] = torch.stack([ref_seq[chosen], ref_seq[rejected]], dim=1)
        pair_policy = torch.stack([policy_seq[chosen], policy_seq[rejected]], dim=1)
        figures = {
            "reward": float(scored.scores.mean()) if len(scored.scores) else float("nan"),
            "kl": float((policy_seq - ref_seq).mean()) if len(scored.scores) else float("nan"),
            "pairs": float(len(chosen)), "pairs_dropped": float(len(scored.scores) // 2 - len(chosen)),
            "score_gap": float((scored.scores[chosen] - scored.scores[rejected]).mean()) if chosen else float("nan"),
            **implicit_reward_figures(pair_policy, experience["ref_logps"], cfg.beta),
            **scored.figures,
        }
        return experience, figures

    stage = job.online_stage(collect, pair_loss_fn(run.policy, cfg, temperature, device))
    return finish_pair_stage(run, stage, out, cfg, data_key=file_fingerprint(cfg.prompts), name="online_dpo",
                         extra={"prompts": len(job.prompt_ids), "objective": cfg.loss})
