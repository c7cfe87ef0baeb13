"""What the online stages (PPO, RLOO, GRPO, online DPO) share: prompts per iteration, sampling
and scoring with faulty samples dropped, the signs of reward hacking of every batch (and the
monitors that watch them), and no-grad log-prob passes over an experience batch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from alignlab.data.formats import load_prompts
from alignlab.data.tokenize import tokenize_prompts
from alignlab.eval.hacking import batch_signs
from alignlab.feedback.rewards import RewardSpec, ScoringBatch, score_safely
from alignlab.guard.replay import ReplayGuardedSampler
from alignlab.guard.sampler import GuardedRollouts, GuardedSampler
from alignlab.guard.settings import RolloutGuardSettings
from alignlab.ops.importance import Level, Mode, importance_weights
from alignlab.rollout import LocalSampler, Rollouts, Sampler, SamplingSettings, VLLMSampler, logp_mismatch, sample, to_batch
from alignlab.rollout.vllm_server import VLLMServerSampler, VLLMServerSettings
from alignlab.stages.blocks import DtypeSettings, ModelSettings, PromptLengthSettings
from alignlab.train.distributed import Dist, busiest
from alignlab.train.monitors import GOLD_MONITORS, HackingMonitor, MonitorSettings
from alignlab.train.online import OnlineSettings, OnlineStage


class OnlineMonitors(MonitorSettings):
    """Reward-hacking monitors (`alignlab.train.monitors`) and the held-out scorer they compare the proxy with."""

    gold: RewardSpec | None = Field(
        None, description="a held-out scorer of every batch, never trained on: the task's gold scorer, or another "
        "reward model or judge; logged as hack/gold_mean and needed by proxy_gold_gap and proxy_gold_slope")

    @model_validator(mode="after")
    def _gold_for_the_gap(self) -> "OnlineMonitors":
        needing = [name for name in GOLD_MONITORS if getattr(self, name) is not None]
        if needing and self.gold is None:
            raise ValueError(f"monitors.{needing[0]} compares the proxy with a held-out score: set monitors.gold "
                             "(e.g. {type: gold, task: sentiment})")
        return self


class OnlineConfig(ModelSettings, DtypeSettings, PromptLengthSettings):
    """Settings every online stage has."""

    prompts: str
    reward: RewardSpec
    ref_model: str | None = Field(None, description="the KL anchor; default: the starting model")
    sampling: SamplingSettings = SamplingSettings()
    on_reward_error: Literal["drop", "stop"] = Field("drop", description="a sample whose reward fails or is NaN")
    rollout_backend: Literal["local", "vllm", "vllm-server"] = Field(
        "local", description="vllm: sample with a vLLM engine in this process (alignlab's vllm extra); vllm-server: "
        "with a running `vllm serve` (vllm_server); the policy's weights are pushed to either before every iteration")
    vllm: dict[str, Any] = Field({}, description="keyword arguments for vllm.LLM, e.g. gpu_memory_utilization, "
                                 "enable_lora (sync the adapter only), enable_sleep_mode (and alignlab's sleep_level: 1 or 2)")
    vllm_server: VLLMServerSettings = VLLMServerSettings()
    train: OnlineSettings = OnlineSettings()
    monitors: OnlineMonitors | None = Field(
        None, description="reward-hacking monitors: thresholds on each batch's length–reward correlation, "
        "distinct-n, entropy and proxy-versus-gold gap, each warning or stopping the run")
    guard: RolloutGuardSettings | None = Field(
        None, description="sample rollouts behind constitutional classifiers: a prompt the input classifier flags is "
        "dropped with its group, a rollout the streaming output classifier flags ends at the flagged token (and gets "
        "halted_reward when set); the local sampler stops there, a vLLM one is cut there after sampling")
    moved: ClassVar[dict[str, str]] = {"update_epochs": "train.update_epochs"}


class RolloutCorrection(BaseModel):
    """Importance weights π_old/π_sampler on each token's loss, bounded (TIS: truncate; MIS: mask)."""

    model_config = ConfigDict(extra="forbid")

    level: Level = Field("token", description="token: a weight per token; sequence: the product over the sequence")
    mode: Mode = Field("truncate", description="truncate: min(ratio, threshold) (TIS); mask: 0 above it (MIS)")
    threshold: float = Field(2.0, gt=1, description="the bound on the ratio")

    def weights(self, old_logps: Tensor, sampler_logps: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The bounded weights [B, T-1] (as the log-probs) and their statistics as is/* figures."""
        weights, stats = importance_weights(old_logps, sampler_logps, mask, level=self.level, mode=self.mode,
                                            threshold=self.threshold)
        return weights, {f"is/{k}": float(v) for k, v in stats.items()}


def check_sample_lengths(model: str, prompt_ids: list[list[int]], max_new_tokens: int) -> None:
    """The longest prompt and its sampled continuation must fit the model's positions."""
    from alignlab.models import check_length_limit

    longest = max(map(len, prompt_ids), default=0)
    check_length_limit(model, longest + max_new_tokens,
                       f"the longest prompt ({longest} tokens) + sampling.max_new_tokens ({max_new_tokens}) =",
                       "lower sampling.max_new_tokens or max_prompt_length")


def iteration_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """The sampling seed of one iteration (and process): a resumed run draws the same samples again."""
    return seed * 100_003 + iteration + 1_000_000_007 * rank


def my_share(indices: list[int], dist) -> list[int]:
    """This process's share of an iteration's prompts (all of them for one process)."""
    return indices[dist.rank :: dist.world_size]


class PromptStream:
    """Prompts for each iteration: seeded shuffles of the whole set, one after another."""

    def __init__(self, n: int, per_iteration: int, seed: int):
        if n == 0:
            raise ValueError("no prompts to sample from")
        self.n, self.per_iteration, self.seed = n, per_iteration, seed

    def indices(self, iteration: int) -> list[int]:
        out: list[int] = []
        position = iteration * self.per_iteration
        while len(out) < self.per_iteration:
            epoch, offset = divmod(position, self.n)
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)).tolist()
            take = order[offset : offset + self.per_iteration - len(out)]
            out += take
            position += len(take)
        return out


def load_prompt_ids(path: str, tokenizer, max_prompt_length: int) -> tuple[list[str], list[list[int]]]:
    prompts = load_prompts(path)
    return [p.prompt for p in prompts], tokenize_prompts(prompts, tokenizer, max_prompt_length)


@dataclass
class PolicySamples:
    """k samples of each prompt from a loaded policy; sample i of prompt p is row p*k + i."""

    tokenizer: object
    policy: torch.nn.Module
    device: torch.device
    prompts: list[str]
    prompt_ids: list[list[int]]
    k: int
    texts: list[str]

    @property
    def row_prompts(self) -> list[str]:
        """The prompt of every sample row."""
        return [p for p in self.prompts for _ in range(self.k)]


def sample_policy(model: str, prompts_path: str, k: int, sampling: SamplingSettings, *, max_prompt_length: int,
                  n_prompts: int | None, seed: int) -> PolicySamples:
    """Load `model`, take the first `n_prompts` prompts (all when None) and sample k of each."""
    from alignlab.models import load_causal_lm, load_tokenizer
    from alignlab.stages.common import runtime, seed_everything

    tokenizer = load_tokenizer(model)
    prompts, prompt_ids = load_prompt_ids(prompts_path, tokenizer, max_prompt_length)
    prompts, prompt_ids = prompts[:n_prompts], prompt_ids[:n_prompts]
    device, _ = runtime("auto")
    seed_everything(seed)
    policy = load_causal_lm(model, device=device)
    rollouts = sample(policy, [ids for ids in prompt_ids for _ in range(k)], sampling,
                      pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, seed=seed)
    texts = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
    return PolicySamples(tokenizer, policy, device, prompts, prompt_ids, k, texts)


@dataclass
class ScoredRollouts:
    rollouts: Rollouts
    prompts: list[str]
    completions: list[str]
    scores: Tensor
    figures: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def sample_and_score(
    sampler: Sampler, tokenizer, prompt_texts: list[str], prompt_ids: list[list[int]], k: int,
    sampling: SamplingSettings, reward, on_error: str, seed: int, halted_reward: float | None = None,
) -> ScoredRollouts:
    """k samples per prompt from `sampler` (local or vLLM), scored; samples whose reward failed
    are dropped — with their whole group when k > 1, because the group's baseline needs every member.

    From a guarded sampler, a prompt its input classifier refused is dropped with its group (it is
    never scored), and a rollout its output classifier halted gets `halted_reward` when one is set."""
    repeated = [ids for ids in prompt_ids for _ in range(k)]
    texts_in = [t for t in prompt_texts for _ in range(k)]
    rollouts = sampler.sample(repeated, sampling, seed=seed)
    completions = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
    guarded = isinstance(rollouts, GuardedRollouts)
    halted = torch.tensor([h is not None for h in rollouts.halted_at] if guarded else [False] * len(repeated),
                          dtype=torch.bool)
    settled = halted if halted_reward is not None else torch.zeros_like(halted)  # their reward is set: not scored
    rows = [i for i in range(len(repeated)) if not (guarded and rollouts.blocked[i]) and not settled[i]]
    result = score_safely(reward, ScoringBatch(*[[values[i] for i in rows] for values in (
        texts_in, completions, rollouts.prompt_ids, rollouts.completion_ids, rollouts.finished)]), on_error=on_error)
    result = result.spread(rows, len(repeated))
    result.override(settled, halted_reward)
    figures = {}
    if guarded:
        figures = {"guard/blocked_rate": sum(rollouts.blocked) / max(len(repeated), 1),
                   "guard/halted_rate": halted.float().mean().item() if len(repeated) else 0.0}
    valid = result.valid.view(-1, k).all(dim=1).repeat_interleave(k) if k > 1 else result.valid
    keep = valid.nonzero().flatten().tolist()
    figures.update({f"reward/{name}": _mean(values, valid) for name, values in result.terms.items()})
    figures.update({"dropped_samples": float(len(valid) - len(keep)),
                    "response_tokens": sum(map(len, rollouts.completion_ids)) / max(len(repeated), 1),
                    "eos_rate": sum(rollouts.finished) / max(len(repeated), 1)})
    kept = Rollouts(*[[getattr(rollouts, f)[i] for i in keep] for f in ("prompt_ids", "completion_ids", "logps", "finished")])
    return ScoredRollouts(kept, [texts_in[i] for i in keep], [completions[i] for i in keep], result.scores[keep],
                          figures, result.problems)


def _mean(values: list[float], valid: Tensor) -> float:
    """The mean over the kept samples the term scored (a halted rollout's set reward was not scored)."""
    kept = [v for v, ok in zip(values, valid.tolist()) if ok and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


@torch.no_grad()
def batched_logps(fn, batch: dict[str, Tensor], device, micro: int, *, in_step_with: Dist | None = None) -> Tensor:
    """Run `fn(micro_batch) -> [b, T-1]` over `batch` in micro-batches, gathered on the CPU.

    `in_step_with`: the process group of a sharded model inside `fn`, whose forwards are collectives.
    Processes can hold different numbers of samples (a reward failure drops a group on one of them),
    so each runs as many micro-batches as the busiest, the extra ones on a spare row, results dropped."""
    n = batch["input_ids"].shape[0]
    starts = range(0, n, micro)
    # counted before any forward: every process must reach this collective before the first all-gather
    most = busiest(len(starts), in_step_with, device) if in_step_with else len(starts)
    parts = []
    for start in starts:
        part = {k: v[start : start + micro].to(device) for k, v in batch.items() if v.dim() >= 1}
        parts.append(fn(part).float().cpu())
    if most > len(parts):
        spare = {k: (v[:1] if n else v.new_zeros((1, *v.shape[1:]))).to(device)
                 for k, v in batch.items() if v.dim() >= 1}
        if not n:  # no sample left here: a row of padding that attends to itself
            spare["attention_mask"] = torch.ones_like(spare["attention_mask"])
        for _ in range(most - len(parts)):
            fn(spare)
    return torch.cat(parts) if parts else torch.zeros(0, batch["input_ids"].shape[1] - 1)


def rollout_batch(scored: ScoredRollouts, pad_id: int) -> dict[str, Tensor]:
    """Right-padded ids, masks and the sampler's log-probs of the kept samples (on the CPU)."""
    return to_batch(scored.rollouts, pad_id)


def mismatch_figures(sampler_logps: Tensor, trainer_logps: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the sampler's log-probs are from the trainer's on the same tokens (≈0 / ratio ≈1 is healthy)."""
    return {f"sampler/{k}": float(v) for k, v in logp_mismatch(sampler_logps, trainer_logps, mask).items()}


@dataclass
class OnlineRun:
    """What every reward-driven online stage sets up first: tokenizer, prompts, device, reward
    source, the trainable policy (dropout off) and the stream of prompts per iteration."""

    cfg: OnlineConfig
    settings: OnlineSettings
    tokenizer: object
    prompt_texts: list[str]
    prompt_ids: list[list[int]]
    device: torch.device
    reward: object
    policy: torch.nn.Module
    stream: PromptStream
    dist: Dist
    sampler: Sampler
    gold: object | None = None
    monitor: HackingMonitor | None = None
    last_scored: ScoredRollouts | None = None

    @classmethod
    def start(cls, cfg: OnlineConfig) -> OnlineRun:
        from alignlab.feedback.rewards import build_reward
        from alignlab.models import disable_dropout, load_tokenizer
        from alignlab.stages.common import load_policy, runtime, seed_everything

        tokenizer = load_tokenizer(cfg.model)
        texts, ids = load_prompt_ids(cfg.prompts, tokenizer, cfg.max_prompt_length)
        check_sample_lengths(cfg.model, ids, cfg.sampling.max_new_tokens)
        settings = cfg.train
        device, dist = runtime(settings.device)
        seed_everything(settings.seed)
        reward = build_reward(cfg.reward, tokenizer, device)  # a bad reward fails before the model loads
        policy = load_policy(cfg.model, cfg.dtype, device, getattr(cfg, "lora", None))
        disable_dropout(policy)
        stream = PromptStream(len(ids), settings.prompts_per_iteration, settings.seed)
        guard = cfg.guard.build(tokenizer, device) if cfg.guard is not None else None
        if cfg.rollout_backend == "vllm":
            sampler = VLLMSampler(cfg.model, **_engine_options(cfg, settings, dist))
        elif cfg.rollout_backend == "vllm-server":
            sampler = _server_sampler(cfg, dist)
        elif guard is not None:  # the local sampler stops a row at the flagged token
            sampler = GuardedSampler(policy, guard, tokenizer.pad_token_id, tokenizer.eos_token_id)
        else:
            sampler = LocalSampler(policy, tokenizer.pad_token_id, tokenizer.eos_token_id)
        if guard is not None and cfg.rollout_backend != "local":  # an engine's samples are cut afterwards
            sampler = ReplayGuardedSampler(sampler, guard, tokenizer.pad_token_id)
        monitors = cfg.monitors
        gold = build_reward(monitors.gold, tokenizer, device) if monitors is not None and monitors.gold else None
        monitor = HackingMonitor(monitors) if monitors is not None else None
        return cls(cfg, settings, tokenizer, texts, ids, device, reward, policy, stream, dist, sampler, gold, monitor)

    def reference(self):
        """The frozen KL anchor (the policy with its adapter off under LoRA, else a loaded copy, sharded
        with the policy)."""
        from alignlab.stages.common import frozen_reference, sharded_training

        cfg = self.cfg
        return frozen_reference(self.policy, cfg.model, cfg.ref_model or cfg.model, getattr(cfg, "lora", None),
                                cfg.dtype, self.device, shard=sharded_training(self.settings, self.dist))

    def sample(self, iteration: int, k: int) -> ScoredRollouts:
        """k scored samples per prompt of this iteration (this process's share), from the current policy."""
        idx = my_share(self.stream.indices(iteration), self.dist)
        scored = self._score(idx, k, iteration_seed(self.settings.seed, iteration, self.dist.rank))
        scored.figures.update(hacking_signs(scored, self.gold, self.cfg.sampling.max_new_tokens))
        self.last_scored = scored
        return scored

    def _score(self, idx: list[int], k: int, seed: int) -> ScoredRollouts:
        engine = getattr(self.sampler, "inner", self.sampler)  # behind a replayed guard: the engine it wraps
        if isinstance(engine, (VLLMSampler, VLLMServerSampler)):
            # the engine holds its own copy of the weights: bring it to the policy's current ones
            # (every iteration, a resumed run's first included, and for the final samples)
            engine.load_weights(self.policy)
        return sample_and_score(self.sampler, self.tokenizer, [self.prompt_texts[i] for i in idx],
                                [self.prompt_ids[i] for i in idx], k, self.cfg.sampling, self.reward,
                                self.cfg.on_reward_error, seed=seed,
                                halted_reward=self.cfg.guard.halted_reward if self.cfg.guard else None)

    def recent_samples(self, n: int) -> list[dict]:
        """Up to n of the last iteration's scored samples, for samples.jsonl."""
        return _records(self.last_scored, n) if self.last_scored is not None else []

    def fresh_samples(self, n: int) -> list[dict]:
        """One new sample for each of n prompts from the policy as it is now (after the last update)."""
        idx = self.stream.indices(self.settings.iterations)[:n]
        self.policy.eval()
        return _records(self._score(idx, 1, iteration_seed(self.settings.seed, self.settings.iterations)), n)

    def online_stage(self, collect, loss, **kwargs) -> OnlineStage:
        """The loop's view of this run's algorithm, with its samples shown in samples.jsonl and its monitors."""
        return OnlineStage(collect, loss, recent_samples=self.recent_samples, fresh_samples=self.fresh_samples,
                           monitor=self.monitor, **kwargs)


def hacking_signs(scored: ScoredRollouts, gold=None, max_new_tokens: int | None = None) -> dict[str, float]:
    """The batch's `hack/*` figures (`alignlab.eval.hacking`), with the held-out `gold` score of the
    same samples when one is configured (a sample it cannot score is left out of its mean), and the
    share cut at `max_new_tokens` (a guard's halt is not a cut)."""
    r = scored.rollouts
    truncated = None
    if max_new_tokens is not None:
        truncated = [not done and len(c) >= max_new_tokens for c, done in zip(r.completion_ids, r.finished)]
    gold_scores = None
    if gold is not None:
        batch = ScoringBatch(scored.prompts, scored.completions, r.prompt_ids, r.completion_ids, r.finished)
        gold_scores = score_safely(gold, batch, on_error="drop").scores.tolist()
    return batch_signs([len(c) for c in r.completion_ids], scored.scores.tolist(), scored.completions, r.logps,
                       gold_scores, truncated)


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora's MaxLoRARanks (0.32)


def _engine_options(cfg: OnlineConfig, settings: OnlineSettings, dist) -> dict:
    """vllm.LLM's options: the user's, an adapter engine sized for the policy's LoRA rank."""
    from alignlab.stages.common import sharded_training

    if sharded_training(settings, dist):
        raise ValueError("rollout_backend vllm syncs the engine from a whole policy on each process; with "
                         "train.parallel fsdp it would have to gather every weight first, which is not built yet: "
                         "use train.parallel ddp (or the local sampler)")
    options = dict(cfg.vllm)
    lora = getattr(cfg, "lora", None)
    if options.get("enable_lora") and lora is not None:  # the smallest rank bound vLLM takes that fits
        options.setdefault("max_lora_rank", next((r for r in VLLM_LORA_RANKS if r >= lora.r), lora.r))
    return options


def _server_sampler(cfg: OnlineConfig, dist) -> VLLMServerSampler:
    if dist.enabled:  # every process would push its own copy of the weights to the one server
        raise ValueError("rollout_backend vllm-server takes the weights of one training process; with several "
                         "use rollout_backend vllm (an engine in each process)")
    s = cfg.vllm_server
    return VLLMServerSampler(s.url, s.served_model or cfg.model, sync_dir=s.sync_dir, parallel_requests=s.parallel_requests)


def _records(scored: ScoredRollouts, n: int) -> list[dict]:
    return [{"prompt": p, "completion": c, "reward": float(r)}
            for p, c, r in zip(scored.prompts[:n], scored.completions[:n], scored.scores[:n].tolist())]
