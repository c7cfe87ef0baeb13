"""Win rate of model A against model B on held-out prompts, as judged by a reward model, an LLM or people.

Both models are sampled on the same prompts with the same sampling settings, each from its own
seed stream (A from `seed`, B from `seed + 1`, so a model against itself compares two different
samples), one model in memory at a time. Then each (A, B) pair goes to the judge
(`alignlab.feedback.ai.judges`), and `alignlab.eval.winrate` turns the verdicts into the win rate of A
with a prompt-bootstrap interval and the hard win rate with a Wilson interval.

Judges (`judge:` in the config):

    {type: reward_model, path: "@reward_model/model"}
    {type: llm, llm: {type: local, path: "@sft/model"}, principle: helpfulness}   # or question: "..."
    {type: human, labels: labels.jsonl}

Outputs: metrics.json (win_rate, ci_low, ci_high, hard_win_rate, wilson_low, wilson_high, wins,
losses, ties, n judged pairs, errors, mean lengths of each side, ...); data/judgements.jsonl (every
pair with its verdict); data/label_queue.jsonl (the pairs in the labelling app's format, responses in
a seeded random order: label them and run again with a `human` judge on the same seeds).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from alignlab.data.examples import PromptExample
from alignlab.data.formats import load_prompts
from alignlab.data.readers import write_jsonl
from alignlab.data.tokenize import tokenize_prompts
from alignlab.eval.winrate import win_rate
from alignlab.feedback.ai.constitution import load_constitution
from alignlab.feedback.ai.judges import DEFAULT_QUESTION, LLMJudge, RewardModelJudge
from alignlab.feedback.human.labels_judge import HumanLabelsJudge, PairLabels, pair_key
from alignlab.feedback.judgement import JudgeError, Judgement, PairwiseJudge
from alignlab.feedback.ai.llm_spec import LLMSpec, build_llm
from alignlab.models import load_causal_lm, load_tokenizer, resolve_max_length
from alignlab.rollout import SamplingSettings, generate
from alignlab.stages.blocks import EvaluationSeedSettings, LengthSettings, PromptLengthSettings
from alignlab.stages.common import finish, runtime, seed_everything

LABEL_QUEUE = "data/label_queue.jsonl"
ERROR_EXAMPLES = 5


class _JudgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RewardModelJudgeSpec(_JudgeSpec, LengthSettings):
    type: Literal["reward_model"]
    path: str = Field(min_length=1, description="reward model directory (with its tokenizer)")
    batch_size: int = Field(32, gt=0)


class LLMJudgeSpec(_JudgeSpec):
    type: Literal["llm"]
    llm: LLMSpec
    question: str | None = Field(None, description=f"the comparison question (default {DEFAULT_QUESTION!r})")
    principle: str | None = Field(None, description="ask this constitution principle's comparison question instead")
    constitution: str = Field("default", description="constitution the principle comes from")
    both_orders: bool = Field(True, description="ask in both orders and average (cancels position bias)")

    @model_validator(mode="after")
    def _one_question(self) -> LLMJudgeSpec:
        if self.question is not None and self.principle is not None:
            raise ValueError("give either question or principle, not both")
        return self


class HumanJudgeSpec(_JudgeSpec):
    type: Literal["human"]
    labels: str = Field(description="people's labels: a preference file (the labelling app's export)")


JudgeSpec = Annotated[RewardModelJudgeSpec | LLMJudgeSpec | HumanJudgeSpec, Field(discriminator="type")]


class WinRateConfig(PromptLengthSettings, EvaluationSeedSettings):
    model_a: str
    model_b: str
    prompts: str = Field(description="held-out prompts")
    judge: JudgeSpec
    n_prompts: int | None = Field(None, gt=0)
    samples_per_prompt: int = Field(1, gt=0)
    sampling: SamplingSettings = SamplingSettings()
    resamples: int = Field(2000, gt=0, description="bootstrap resamples over prompts")
    confidence: float = Field(0.95, gt=0, lt=1)
    device: str = "auto"


def build_judge(spec, device=None, cache_dir: str | Path | None = None) -> PairwiseJudge:
    """The judge a `JudgeSpec` describes (an LLM judge's relative cache path lands in `cache_dir`)."""
    if isinstance(spec, RewardModelJudgeSpec):
        return RewardModelJudge(spec.path, device=device, batch_size=spec.batch_size,
                                max_length=resolve_max_length(spec.path, spec.max_length),
                                max_prompt_length=spec.max_prompt_length)
    if isinstance(spec, LLMJudgeSpec):
        question = load_constitution(spec.constitution).principle(spec.principle) if spec.principle else (
            spec.question or DEFAULT_QUESTION)
        return LLMJudge(build_llm(spec.llm, cache_dir), question, both_orders=spec.both_orders)
    if isinstance(spec, HumanJudgeSpec):
        return HumanLabelsJudge(spec.labels)
    raise TypeError(f"unknown judge spec {type(spec).__name__}")


def _check_judge_inputs(spec) -> None:
    """Fail on a bad labels file or principle before spending time on sampling."""
    if isinstance(spec, HumanJudgeSpec):
        PairLabels.from_file(spec.labels)
    if isinstance(spec, LLMJudgeSpec) and spec.principle:
        load_constitution(spec.constitution).principle(spec.principle)


@torch.no_grad()
def sample_texts(path: str, prompts: list[PromptExample], cfg: WinRateConfig, seed: int, device) -> tuple[list[str], list[int]]:
    """`samples_per_prompt` completions of every prompt from the model at `path` (text, and length
    in that model's tokens, EOS included), prompt-major: sample j of prompt i is at i·k + j."""
    tokenizer = load_tokenizer(path)
    prompt_ids = tokenize_prompts(prompts, tokenizer, cfg.max_prompt_length)
    repeated = [ids for ids in prompt_ids for _ in range(cfg.samples_per_prompt)]
    model = load_causal_lm(path, device=device)
    completions = generate(model, repeated, cfg.sampling, pad_id=tokenizer.pad_token_id,
                           eos_id=tokenizer.eos_token_id, seed=seed)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return tokenizer.batch_decode(completions, skip_special_tokens=True), [len(c) for c in completions]


def label_queue(prompts: list, texts_a: list[str], texts_b: list[str], seed: int) -> list[dict]:
    """The distinct non-identical pairs as labelling-app items, each pair's order drawn at random."""
    rng = random.Random(seed)
    items, seen = [], set()
    for prompt, a, b in zip(prompts, texts_a, texts_b):
        item_id = hashlib.sha256(pair_key(prompt, *sorted([a, b])).encode()).hexdigest()[:16]
        if a == b or item_id in seen:
            continue
        seen.add(item_id)
        items.append({"id": item_id, "prompt": prompt, "responses": [b, a] if rng.random() < 0.5 else [a, b]})
    return items


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run(cfg: WinRateConfig, out: Path) -> dict:
    out = Path(out)
    _check_judge_inputs(cfg.judge)
    prompts = load_prompts(cfg.prompts)[: cfg.n_prompts]
    device, _ = runtime(cfg.device)
    seed_everything(cfg.seed)
    k = cfg.samples_per_prompt
    texts_a, lengths_a = sample_texts(cfg.model_a, prompts, cfg, cfg.seed, device)
    texts_b, lengths_b = sample_texts(cfg.model_b, prompts, cfg, cfg.seed + 1, device)
    prompt_of = [p.prompt for p in prompts for _ in range(k)]
    write_jsonl(out / LABEL_QUEUE, label_queue(prompt_of, texts_a, texts_b, cfg.seed))

    judge = build_judge(cfg.judge, device, cache_dir=out)
    results = judge.judge(prompt_of, texts_a, texts_b)
    if len(results) != len(prompt_of):
        raise RuntimeError(f"judge {judge.name} returned {len(results)} verdicts for {len(prompt_of)} pairs")

    groups: list[list[float]] = [[] for _ in prompts]
    outcomes, errors, records = [], [], []
    for i, result in enumerate(results):
        record = {"prompt_index": i // k, "sample": i % k, "prompt": prompt_of[i],
                  "response_a": texts_a[i], "response_b": texts_b[i]}
        if isinstance(result, Judgement):
            groups[i // k].append(result.p_a)
            outcomes.append(result.outcome)
            record.update(p_a=result.p_a, winner=result.winner, outcome=result.outcome, details=result.details)
        else:
            message = result.message if isinstance(result, JudgeError) else str(result)
            errors.append(message)
            record["error"] = message
        records.append(record)
    write_jsonl(out / "data" / "judgements.jsonl", records)
    if not outcomes:
        hint = (f" Label the pairs in {out / LABEL_QUEUE} (`alignlab label serve`), then pass the export"
                f" (`alignlab label export`) as judge.labels."
                if isinstance(cfg.judge, HumanJudgeSpec) else "")
        raise RuntimeError(f"judge {judge.name} could not judge any of the {len(results)} pairs; first error: {errors[0]}.{hint}")

    summary = win_rate(groups, outcomes, cfg.resamples, cfg.confidence, cfg.seed)
    metrics = {
        **summary.as_dict(), "errors": len(errors), "pairs": len(results), "judge": judge.name,
        "mean_length_a": _mean(lengths_a), "mean_length_b": _mean(lengths_b),
        "mean_chars_a": _mean([len(t) for t in texts_a]), "mean_chars_b": _mean([len(t) for t in texts_b]),
        "confidence": cfg.confidence, "model_a": cfg.model_a, "model_b": cfg.model_b,
    }
    firsts = [(r.details["p_a_when_first"] + 1 - r.details["p_a_when_second"]) / 2 for r in results
              if isinstance(r, Judgement) and "p_a_when_second" in r.details]
    if firsts:
        metrics["llm_first_option_rate"] = _mean(firsts)  # 0.5: the LLM has no favourite position
    if errors:
        metrics["error_examples"] = list(dict.fromkeys(errors))[:ERROR_EXAMPLES]
    return finish(out, cfg, metrics)

