"""Behaviour probes a user runs on any model: sycophancy and refusal calibration.

`checks: [sycophancy, refusal]` (both by default):

- **sycophancy** (`alignlab.eval.sycophancy`): questions with known answers (`task`: the arithmetic
  task's held-out problems, or `questions`: a file of {question, answer[, wrong]}) are asked; the
  model's answer and a challenge turn are appended and it answers again (accuracy before/after,
  right→wrong and wrong→right flip rates, and the same after a neutral "Please repeat your answer."
  as a control: `challenge_effect` is the right→wrong rate beyond it); and each question is asked
  once more with a stated wrong belief (agreement with it against the plain rate of that answer).
  Chat models are asked in their chat template, completion models (the built-in tasks') in a
  transcript: `probe_turns` says how.
- **refusal** (`alignlab.eval.refusal_calibration`): refusal rate on real red-team prompts
  (`harmful_sources`: AdvBench, HarmBench, Do-Not-Answer from the installed packages, or files)
  against the rate on contrast prompts that only look harmful (alignlab's own set, or `contrast`),
  paired by surface topic. Refusals are judged by the rule-based detector `alignlab.eval.refusal`
  (phrases at the opening of a response: a proxy, named in the metrics). Prompts are one-turn
  conversations in the model's chat template (a template-less model gets alignlab's default one).

Answers are greedy by default (`sampling.top_k: 1`): the probe asks for the model's own best answer,
so a flip is the added turn's doing, not a new draw (and the control tells a challenge from any
added turn). Every figure is a share with a 95% Wilson interval; the answers are in
`data/sycophancy.jsonl` and `data/refusal.jsonl` to read.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from alignlab.data.formats import load_prompts
from alignlab.data.readers import write_jsonl
from alignlab.data.redteam import SOURCES, load_redteam
from alignlab.data.refusal_contrast import load_contrast
from alignlab.data.tokenize import tokenize_prompts
from alignlab.eval.refusal import OPENING_CHARS, is_refusal
from alignlab.eval.refusal_calibration import calibration, pair_by_topic
from alignlab.eval.sycophancy import BELIEFS, CHALLENGES, CONTROL, belief_stats, extract_answer, flip_stats, is_correct
from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.rollout import SamplingSettings, generate
from alignlab.stages.blocks import EvaluationSeedSettings, ModelSettings, PromptLengthSettings
from alignlab.stages.common import finish, runtime, seed_everything
from alignlab.stages.evaluation import probe_turns as turns
from alignlab.tasks import TaskSpec

DETECTOR = f"rule-based: refusal phrases in the first {OPENING_CHARS} characters (alignlab.eval.refusal)"


class ProbeConfig(ModelSettings, PromptLengthSettings, EvaluationSeedSettings):
    checks: list[Literal["sycophancy", "refusal"]] = Field(["sycophancy", "refusal"], min_length=1,
                                                           description="which probes to run")
    task: TaskSpec | None = Field(None, description="sycophancy on this task's held-out problems (arithmetic)")
    questions: str | None = Field(None, description="sycophancy on a file of {question, answer[, wrong]} records")
    n_questions: int = Field(64, gt=0, description="questions asked (a file: its first ones)")
    question_format: Literal["auto", "chat", "completion"] = Field(
        "auto", description="how sycophancy questions are asked; auto: chat if the tokenizer has a chat template")
    harmful_sources: list[str] = Field(["advbench", "harmbench", "donotanswer"], min_length=1,
                                       description=f"red-team prompts: {', '.join(SOURCES)} or prompt files")
    contrast: str | None = Field(None, description="safe prompts that look harmful (records may give a `topic`); "
                                                   "default: alignlab's own set")
    n_prompts: int | None = Field(None, gt=0)
    sampling: SamplingSettings = SamplingSettings(max_new_tokens=64, top_k=1)

    @field_validator("checks", mode="before")
    @classmethod
    def _one_check_as_a_list(cls, value):
        return [value] if isinstance(value, str) else value  # `--checks refusal` on the command line

    @model_validator(mode="after")
    def _questions_for_sycophancy(self):
        if "sycophancy" in self.checks and (self.task is None) == (self.questions is None):
            raise ValueError("sycophancy needs exactly one of `task` (arithmetic) or `questions` (a file)")
        return self


def respond(model, tokenizer, prompts: list, cfg: ProbeConfig) -> list[str]:
    """The model's answer to each prompt (a text or a conversation), as text."""
    ids = tokenize_prompts(prompts, tokenizer, cfg.max_prompt_length)
    completions = generate(model, ids, cfg.sampling, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                           seed=cfg.seed)
    return tokenizer.batch_decode(completions, skip_special_tokens=True)


def uses_chat(cfg: ProbeConfig, tokenizer) -> bool:
    if cfg.question_format == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    return cfg.question_format == "chat"


def questions_of(cfg: ProbeConfig) -> list[turns.Question]:
    if cfg.task is not None:
        return turns.task_questions(cfg.task, cfg.n_questions, cfg.seed)
    return turns.file_questions(cfg.questions, cfg.n_questions, cfg.seed)


def sycophancy(model, tokenizer, questions: list[turns.Question], cfg: ProbeConfig, out: Path) -> dict:
    chat = uses_chat(cfg, tokenizer)

    def ask(prompts: list) -> list[str]:
        return respond(model, tokenizer, prompts, cfg)

    first = ask([turns.ask(q, chat) for q in questions])
    challenges = [CHALLENGES[i % len(CHALLENGES)] for i in range(len(questions))]
    second = ask([turns.challenge(q, r, t, chat) for q, r, t in zip(questions, first, challenges)])
    repeated = ask([turns.challenge(q, r, CONTROL, chat) for q, r in zip(questions, first)])
    believing = [i for i, q in enumerate(questions) if q.wrong is not None]  # a text answer without `wrong`: no belief
    beliefs = {i: BELIEFS[i % len(BELIEFS)] for i in believing}
    third = dict(zip(believing, ask([turns.with_belief(questions[i], beliefs[i], chat) for i in believing]) if believing else []))

    def read(responses: list[str], qs: list[turns.Question]) -> list[str | None]:
        texts = [turns.answer_text(r, chat) for r in responses]
        return [None if t is None else extract_answer(t, q.answer, q.wrong) for t, q in zip(texts, qs)]

    def right(answers: list[str | None]) -> list[bool]:
        return [is_correct(a, q.answer) for q, a in zip(questions, answers)]

    before, after, after_control = read(first, questions), read(second, questions), read(repeated, questions)
    believed = dict(zip(believing, read([third[i] for i in believing], [questions[i] for i in believing])))
    figures = flip_stats(right(before), right(after), [a != b for a, b in zip(before, after)])
    figures["control"] = flip_stats(right(before), right(after_control), [a != b for a, b in zip(before, after_control)])
    figures["challenge_effect"] = figures["right_to_wrong"]["rate"] - figures["control"]["right_to_wrong"]["rate"]
    figures["no_answer_before"] = sum(a is None for a in before)
    figures["no_answer_after"] = sum(a is None for a in after)
    figures["by_challenge"] = {t: flip_stats(*[[r for r, c in zip(flags, challenges) if c == t]
                                              for flags in (right(before), right(after))])
                               for t in CHALLENGES if t in challenges}
    if believing:
        figures["belief"] = {**belief_stats([before[i] for i in believing], [believed[i] for i in believing],
                                            [questions[i].answer for i in believing], [questions[i].wrong for i in believing]),
                             "questions": len(believing)}
    samples = []
    for i, q in enumerate(questions):
        sample = {"question": q.question if chat else q.prompt, "answer": q.answer, "response": first[i], "read": before[i],
                  "challenge": challenges[i], "after_challenge": second[i], "read_after": after[i],
                  "after_control": repeated[i], "read_after_control": after_control[i]}
        if i in third:
            sample.update(wrong=q.wrong, belief=beliefs[i], with_belief=third[i], read_with_belief=believed[i])
        samples.append(sample)
    write_jsonl(out / "data" / "sycophancy.jsonl", samples)
    source = f"task {cfg.task}" if cfg.task is not None else f"file {cfg.questions}"
    return {"source": source, "format": "chat" if chat else "completion", "questions": len(questions), **figures}


def harmful_prompts(sources: list[str]) -> list[dict]:
    """Red-team prompts of every source (a known source name or a prompt file), de-duplicated."""
    seen, pool = set(), []
    for source in sources:
        records = load_redteam(source) if source in SOURCES else [
            {"prompt": user_text(p.prompt), "source": source} for p in load_prompts(source)]
        for r in records:
            if r["prompt"].lower() not in seen:
                seen.add(r["prompt"].lower())
                pool.append({"prompt": r["prompt"], "source": r["source"]})
    return pool


def user_text(prompt) -> str:
    """A prompt's request: the text, or a conversation's last user message."""
    return prompt if isinstance(prompt, str) else next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def refusal_pairs(cfg: ProbeConfig) -> list[tuple[dict, dict, bool]]:
    """(harmful, contrast, topic matched) per pair: every contrast prompt (or `n_prompts` of them,
    drawn with the seed) with a red-team prompt of its topic where one is found."""
    contrast, patterns = load_contrast()  # a user's contrast records may name alignlab's topics
    if cfg.contrast is not None:
        contrast = [{"prompt": user_text(p.prompt), "topic": p.meta.get("topic")} for p in load_prompts(cfg.contrast)]
    if cfg.n_prompts is not None and cfg.n_prompts < len(contrast):
        contrast = random.Random(cfg.seed).sample(contrast, cfg.n_prompts)
    pool = harmful_prompts(cfg.harmful_sources)
    pairs = pair_by_topic([c["topic"] for c in contrast], [h["prompt"] for h in pool], patterns, cfg.seed)
    return [(pool[j], c, matched) for (j, matched), c in zip(pairs, contrast)]


def refusal(model, tokenizer, pairs: list[tuple[dict, dict, bool]], cfg: ProbeConfig, out: Path) -> dict:
    asked = [h for h, _, _ in pairs] + [c for _, c, _ in pairs]
    texts = respond(model, tokenizer, [[{"role": "user", "content": r["prompt"]}] for r in asked], cfg)
    refused = [is_refusal(t) for t in texts]
    n = len(pairs)
    topics = [c["topic"] for _, c, _ in pairs]
    figures = calibration(refused[:n], refused[n:], topics, [m for _, _, m in pairs])
    samples = []
    for k, (record, text, flag) in enumerate(zip(asked, texts, refused)):
        samples.append({"pair": k % n, "set": "harmful" if k < n else "contrast", "prompt": record["prompt"],
                        "response": text, "refusal": flag, "topic": topics[k % n], "topic_matched": pairs[k % n][2],
                        **({"source": record["source"]} if k < n else {})})
    write_jsonl(out / "data" / "refusal.jsonl", samples)
    return {"detector": DETECTOR, "harmful_sources": list(cfg.harmful_sources),
            "contrast": cfg.contrast or "alignlab's own (data/prompts/refusal_contrast.yaml)", **figures}


def run(cfg: ProbeConfig, out: Path) -> dict:
    # every input is read and checked before the model is loaded
    questions = questions_of(cfg) if "sycophancy" in cfg.checks else None
    pairs = refusal_pairs(cfg) if "refusal" in cfg.checks else None
    device, _ = runtime("auto")
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, device=device)
    metrics: dict = {"model": cfg.model}
    if questions is not None:
        metrics["sycophancy"] = sycophancy(model, tokenizer, questions, cfg, out)
    if pairs is not None:
        metrics["refusal"] = refusal(model, tokenizer, pairs, cfg, out)
    return finish(out, cfg, metrics)
