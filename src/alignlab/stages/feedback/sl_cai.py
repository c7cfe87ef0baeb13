"""SL-CAI stage: the policy answers red-team prompts, a feedback model critiques and revises.

Writes `data/sft.jsonl` (prompt → final revision, for the sft stage), `data/preferences.jsonl`
(final revision ≻ initial response, for reward_model / dpo) and `data/chains.jsonl` (every chain:
initial response, each round's principle, critique and revision, or the error that ended it, and
the gate's verdict). Only revisions that pass the quality gate (`feedback.ai.revision_gate`: not
empty, not a copy of the critique, the request or the instruction, not the initial answer with small
edits, not degenerate repetition) become data; the metrics count the rest by reason. The prompt
formats are in `alignlab.feedback.ai.cai`.

Prompts are processed in fixed batches of `batch_size`; each finished batch is stored in
`parts/` at once, so a killed run resumes with the first unfinished batch and produces the same
files as an uninterrupted one. The final files are written atomically at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from alignlab.data.formats import load_prompts
from alignlab.data.tokenize import tokenize_prompts
from alignlab.feedback.ai.cai import CritiqueSettings, PartStore, critique_and_revise, resume_key
from alignlab.feedback.ai.cai_outputs import write_cai_outputs
from alignlab.feedback.ai.constitution import load_constitution
from alignlab.feedback.ai.revision_gate import GateSettings
from alignlab.feedback.ai.llm_spec import (
    FeedbackGeneration,
    LLMSpec,
    answer_relevant,
    build_llm,
)
from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.rollout import SamplingSettings, generate
from alignlab.stages.blocks import PromptLengthSettings, SeedSettings
from alignlab.stages.common import (
    file_fingerprint,
    finish,
    runtime,
    seed_everything,
)
from alignlab.stages.online.common import iteration_seed


class RevisionGate(BaseModel):
    """Which revisions become data (see `feedback.ai.revision_gate`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false: every non-empty revision becomes data (the paper's pipeline as is)")
    copy_similarity: float = Field(0.8, gt=0, le=1, description="a revision this similar to the critique, the "
                                   "request or the revision instruction is a copy")
    near_copy: float = Field(0.9, gt=0, le=1, description="a revision this similar to the initial answer is unchanged")
    min_distinct: float = Field(0.5, gt=0, le=1, description="below this share of distinct word 3-grams: repetition")

    def settings(self) -> GateSettings | None:
        if not self.enabled:
            return None
        return GateSettings(copy_similarity=self.copy_similarity, near_copy=self.near_copy, min_distinct=self.min_distinct)


class SLCAIConfig(PromptLengthSettings, SeedSettings):
    policy: str = Field(description="the model whose responses are critiqued and revised")
    feedback: LLMSpec = Field(description="the model that critiques and revises (may be the policy)")
    prompts: str = Field(description="red-team prompts (`prompt` or `messages` records)")
    constitution: str = Field("default", description="'default' or a YAML file")
    rounds: int = Field(1, ge=1, le=4, description="critique → revision rounds, a fresh principle each")
    few_shot: int | None = Field(None, ge=0, description="constitution examples before each request; None: all")
    format: Literal["completion", "chat"] = Field("completion", description="how requests are sent (see feedback.cai)")
    sampling: SamplingSettings = SamplingSettings(max_new_tokens=128)
    generation: FeedbackGeneration = FeedbackGeneration()
    gate: RevisionGate = RevisionGate()
    batch_size: int = Field(16, gt=0, description="prompts per stored batch (the unit of resumption)")
    device: str = Field("auto", description="where the policy samples")


class PolicyResponder:
    """The policy's responses to batches of prompts, sampled locally; the model loads on first use
    (a resumed run whose batches are all stored never loads it). Each batch's seed depends on its
    first item only, so a resumed batch draws the samples it would have drawn."""

    def __init__(self, path: str, sampling: SamplingSettings, device: str, seed: int):
        self.path, self.sampling, self.device_name, self.seed = path, sampling, device, seed
        self.tokenizer = load_tokenizer(path)
        self._model = None

    def prompt_ids(self, prompts, max_prompt_length: int) -> list[list[int]]:
        return tokenize_prompts(prompts, self.tokenizer, max_prompt_length)

    def __call__(self, ids: list[list[int]], first_index: int, copies: int = 1) -> list[str]:
        """`copies` responses per prompt, prompt by prompt."""
        if self._model is None:
            device, _ = runtime(self.device_name)
            self._model = load_causal_lm(self.path, device=device)
        rows = [row for row in ids for _ in range(copies)]
        completions = generate(
            self._model, rows, self.sampling, pad_id=self.tokenizer.pad_token_id, eos_id=self.tokenizer.eos_token_id,
            seed=iteration_seed(self.seed, first_index),
        )
        return self.tokenizer.batch_decode(completions, skip_special_tokens=True)


def run(cfg: SLCAIConfig, out: Path) -> dict:
    constitution = load_constitution(cfg.constitution)
    prompts = load_prompts(cfg.prompts)
    policy = PolicyResponder(cfg.policy, cfg.sampling, cfg.device, cfg.seed)
    prompt_ids = policy.prompt_ids(prompts, cfg.max_prompt_length)  # a too-long prompt fails here, before any work
    seed_everything(cfg.seed)
    feedback = build_llm(cfg.feedback, cache_dir=out)
    settings = CritiqueSettings(
        rounds=cfg.rounds, format=cfg.format, few_shot=cfg.few_shot, generation=cfg.generation.settings(), seed=cfg.seed,
    )
    key = resume_key(
        cfg.model_dump(exclude={"feedback", "device"}), answer_relevant(cfg.feedback),
        file_fingerprint(cfg.prompts), constitution.model_dump(),
    )
    store = PartStore(out / "parts", key, len(prompts), cfg.batch_size)

    def process(indices: list[int]) -> list[dict]:
        initial = policy([prompt_ids[i] for i in indices], indices[0])
        return critique_and_revise(indices, [prompts[i].prompt for i in indices], initial, feedback, constitution, settings)

    chains = store.run(process)
    metrics = write_cai_outputs(chains, out / "data", constitution, cfg.gate.settings())
    if metrics["sft_examples"] == 0:
        raise RuntimeError(f"SL-CAI produced no revision to learn from ({metrics}); see {out / 'data' / 'chains.jsonl'} "
                           "(each chain's `gate` says why its revision was not kept)")
    result = finish(out, cfg, {**metrics, "batches_resumed": store.resumed_batches})
    store.remove()
    return result
