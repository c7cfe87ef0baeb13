"""SPIN (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong
Language Models"). Each iteration takes `prompts_per_iteration` demonstrations from an SFT set,
samples the policy's own response to each prompt, and makes the pair demonstration ≻ own
sample; the loss is SPIN's logistic loss (DPO's `sigmoid`). With `reference: previous` (the
paper) the reference is the policy as it was when the samples were drawn: its log-probs are
computed in collect, before the update, so the opponent is always the previous iterate;
`reference: initial` keeps the starting model instead. No reward source is involved.

Mapping to the paper's iterations: a paper iteration regenerates responses for the whole SFT
set with π_t, then trains π_{t+1} for some epochs against reference π_t. Here one online
iteration does the same on `prompts_per_iteration` demonstrations with `update_epochs` passes,
so `prompts_per_iteration` = dataset size, `update_epochs` = epochs and `iterations` = SPIN
iterations reproduces the paper exactly; a smaller `prompts_per_iteration` refreshes the
opponent more often (dataset size / prompts_per_iteration online iterations per pass over
the data). Pairs whose sample equals the demonstration carry no gradient and are dropped.
samples.jsonl (`train.log_samples`) shows the policy's samples beside their demonstrations
(there is no reward to show).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from alignlab.data.errors import DataError, Source
from alignlab.data.formats import load_sft
from alignlab.data.tokenize import tokenize_sft
from alignlab.models import load_tokenizer, resolve_max_length
from alignlab.models.load import disable_dropout
from alignlab.ops import token_logps
from alignlab.rollout import SamplingSettings, sample
from alignlab.stages.blocks import DtypeSettings, LengthSettings, ModelSettings
from alignlab.stages.common import file_fingerprint, frozen_reference, load_policy, runtime, seed_everything
from alignlab.stages.online.common import PromptStream, check_sample_lengths, iteration_seed, my_share
from alignlab.stages.online.preference import (
    PairLossConfig,
    PairRun,
    finish_pair_stage,
    pair_loss_fn,
    pair_sequence_logps,
    pair_tensors,
)
from alignlab.train.online import Experience, OnlineSettings, OnlineStage


class SPINConfig(PairLossConfig, ModelSettings, DtypeSettings, LengthSettings):
    """SPIN: demonstrations and the pair loss; no reward source (the demonstration always wins)."""

    data: str = Field(description="SFT demonstrations (prompt/completion or messages)")
    reference: Literal["previous", "initial"] = Field(
        "previous", description="previous: the policy that drew the samples (SPIN); initial: the starting model")
    sampling: SamplingSettings = SamplingSettings()
    train: OnlineSettings = OnlineSettings()


@dataclass
class Demonstration:
    prompt_ids: list[int]
    completion_ids: list[int]


def load_demonstrations(path: str, tokenizer, max_length: int,
                        max_prompt_length: int) -> tuple[list[Demonstration], dict]:
    """SFT records split into prompt ids (what the policy answers) and the demonstrated completion."""
    examples = load_sft(path)
    rows, stats = tokenize_sft(examples, tokenizer, max_length, max_prompt_length)
    demos = []
    for example, row in zip(examples, rows):
        start = row.loss_mask.index(1)
        if start == 0:
            raise DataError(example.source, "prompt", "SPIN samples the policy's own answer to the prompt, "
                            "and this record has no prompt tokens")
        demos.append(Demonstration(row.input_ids[:start], row.input_ids[start:]))
    if not demos:
        raise DataError(Source(str(path)), None, "no demonstrations")
    return demos, stats


def _spin_records(tokenizer, chosen_demos: list[Demonstration], drawn, n: int) -> list[dict]:
    """Up to n of SPIN's pairs as text for samples.jsonl: the policy's sample beside the demonstration
    it plays against (SPIN has no reward)."""
    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    return [{"prompt": text(d.prompt_ids), "completion": text(c), "demonstration": text(d.completion_ids)}
            for d, c in zip(chosen_demos[:n], drawn.completion_ids[:n])]


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, as its bound methods may be
class _SelfPlay:
    """SPIN's iterations: the policy answers demonstrated prompts; demonstration ≻ own sample."""

    cfg: SPINConfig
    run: PairRun
    demos: list[Demonstration]
    stream: PromptStream
    initial: object | None  # the frozen starting model (`reference: initial`); None: the policy itself
    last: list = field(default_factory=list)  # this iteration's (demonstrations, samples), for samples.jsonl

    def opponent_logps(self, ids, attn, loss_mask):  # the reference the samples play against
        if self.initial is not None:
            return self.initial.token_logps(ids, attn, loss_mask, self.run.temperature)
        # SPIN's opponent: the policy that drew this iteration's samples, before its update
        return token_logps(self.run.policy, ids, attn, loss_mask, self.run.temperature)

    def draw(self, chosen_demos: list[Demonstration], seed: int):
        return sample(self.run.policy, [d.prompt_ids for d in chosen_demos], self.cfg.sampling, pad_id=self.run.pad,
                      eos_id=self.run.tokenizer.eos_token_id, seed=seed)

    def collect(self, iteration: int) -> tuple[Experience, dict]:
        run = self.run
        chosen_demos = [self.demos[i] for i in my_share(self.stream.indices(iteration), run.dist)]
        drawn = self.draw(chosen_demos, iteration_seed(run.settings.seed, iteration, run.dist.rank))
        self.last[:] = [chosen_demos, drawn]
        keep = [j for j, d in enumerate(chosen_demos) if drawn.completion_ids[j] != d.completion_ids]
        experience = pair_tensors([chosen_demos[j].prompt_ids for j in keep],
                                  [chosen_demos[j].completion_ids for j in keep],
                                  [drawn.completion_ids[j] for j in keep], run.pad)
        run.policy.eval()
        ref = pair_sequence_logps(self.opponent_logps, experience, run.device, run.micro) if keep else torch.zeros(0, 2)
        experience["ref_logps"] = ref
        return experience, _spin_figures(drawn, keep, ref, against_initial=self.initial is not None)

    def recent_samples(self, n: int) -> list[dict]:
        return _spin_records(self.run.tokenizer, *self.last, n) if self.last else []

    def fresh_samples(self, n: int) -> list[dict]:
        chosen_demos = [self.demos[i] for i in self.stream.indices(self.run.settings.iterations)[:n]]
        self.run.policy.eval()
        drawn = self.draw(chosen_demos, iteration_seed(self.run.settings.seed, self.run.settings.iterations))
        return _spin_records(self.run.tokenizer, chosen_demos, drawn, n)


def _spin_figures(drawn, keep: list[int], ref: Tensor, against_initial: bool) -> dict[str, float]:
    """An iteration's pair counts, reference log-probs and sample lengths (and KL to the start)."""
    n = max(len(drawn), 1)
    figures = {
        "pairs": float(len(keep)), "pairs_identical": float(len(drawn) - len(keep)),
        "ref/demo_logp": float(ref[:, 0].mean()) if keep else float("nan"),
        "ref/sample_logp": float(ref[:, 1].mean()) if keep else float("nan"),
        "response_tokens": sum(map(len, drawn.completion_ids)) / n, "eos_rate": sum(drawn.finished) / n,
    }
    if against_initial and keep:  # KL of the samples to the starting model (with `previous` it is 0)
        sampled = torch.tensor([sum(drawn.logps[j]) for j in keep])
        figures["kl"] = float((sampled - ref[:, 1]).mean())
    return figures


def _load_spin(cfg: SPINConfig) -> tuple[_SelfPlay, dict]:
    """Demonstrations, runtime, policy (and the frozen start with `reference: initial`); tokenization figures."""
    tokenizer = load_tokenizer(cfg.model)
    max_length = resolve_max_length(cfg.model, cfg.max_length)
    demos, stats = load_demonstrations(cfg.data, tokenizer, max_length, cfg.max_prompt_length)
    check_sample_lengths(cfg.model, [d.prompt_ids for d in demos], cfg.sampling.max_new_tokens)
    settings = cfg.train
    device, dist = runtime(settings.device)
    seed_everything(settings.seed)
    policy = load_policy(cfg.model, cfg.dtype, device, cfg.lora)
    disable_dropout(policy)
    initial = None
    if cfg.reference == "initial":
        initial = frozen_reference(policy, cfg.model, cfg.model, cfg.lora, cfg.dtype, device)
    run = PairRun(policy, tokenizer, settings, device, dist, cfg.sampling.temperature)
    stream = PromptStream(len(demos), settings.prompts_per_iteration, settings.seed)
    return _SelfPlay(cfg, run, demos, stream, initial), stats


def run_spin(cfg: SPINConfig, out: Path) -> dict:
    spin, stats = _load_spin(cfg)
    stage = OnlineStage(spin.collect, pair_loss_fn(spin.run.policy, cfg, spin.run.temperature, spin.run.device),
                        recent_samples=spin.recent_samples, fresh_samples=spin.fresh_samples)
    return finish_pair_stage(spin.run, stage, out, cfg, data_key=file_fingerprint(cfg.data), name="spin",
                         extra={"data": stats, "demonstrations": len(spin.demos), "objective": cfg.loss,
                                "reference": cfg.reference})
