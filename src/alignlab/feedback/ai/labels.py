"""AI preference labels (RLAIF / RL-CAI, Bai et al. 2022): soft labels from a feedback model.

For a pair (a, b) and a principle of the constitution, the feedback model sees a multiple-choice
question (completion format)::

    Consider the following conversation between a human and an assistant:

    Human: <prompt>

    <principle.comparison>
    Options:
    (A) <first response>
    (B) <second response>
    The answer is: (

and `next_token_logprobs(prompt, ["A", "B"])` gives P(A) = softmax of the two log-probs: the
paper's normalised option probabilities, used as soft labels (better calibrated than hard ones).

- Both orders: the question is asked with a first and with b first. A model that favours a slot
  adds a constant c to the log-odds of "A" in both: logit P(A | a first) = s + c and
  logit P(A | b first) = −s + c, where s is its log-odds that a is better. `combine: logit` (the
  default) takes s = (logit P(A | a first) − logit P(A | b first)) / 2, which removes c exactly, and
  reports c (`position_bias_logit`) with P(first option) − 0.5 (`position_bias`); `combine:
  probability` takes the mean of P(A | a first) and P(B | b first), which cancels a bias too but
  pulls every label toward 0.5 as it grows (SmolLM2-135M, P(first) 0.75-0.94 in both orders: labels
  squeezed into 0.47-0.61). Once the dataset's mean c is removed from each order alone,
  `order_consistency` is the share of pairs whose two orders pick the same response.
- Format: `completion` (the paper's, above) or `chat`: the question without its last line as the
  user's message, rendered with the feedback model's own chat template, the assistant's turn then
  starting with "The answer is: (" (or the reasoning); a chat model reads its own format far better.
- Chain of thought (`chain_of_thought=True`): the options are followed by "Let's think step by
  step:", the model writes its reasoning (`complete`), and the answer is asked after it
  ("...reasoning\\nThe answer is: ("). Each order's probability is clamped to [0.4, 0.6]: the
  paper found chain-of-thought labels overconfident and clamped them to 40-60%.
- Ensembling: K principles are drawn per pair (distinct, seeded by the pair's index), and the
  label is the mean of their P(a better).

Output: alignlab's preference format with a soft label — chosen is the response with P ≥ 0.5 and
`label` = max(P, 1 − P), the probability that chosen ≻ rejected (`alignlab.data.formats`), so the
file trains the reward_model and dpo stages as it is. A pair with an `LLMError` in any of its
questions (e.g. a backend that cannot give the log-prob of "A") is reported and left out.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alignlab.data.errors import DataError, Source
from alignlab.data.formats import parse_prompt_record
from alignlab.data.readers import read_records, write_jsonl
from alignlab.feedback.ai.cai import PromptLike, render_conversation
from alignlab.feedback.ai.constitution import Constitution, Principle
from alignlab.feedback.ai.llm.base import GenerationSettings, LLMBackend, LLMError
from alignlab.feedback.judgement import sigmoid

CANDIDATES = ("A", "B")
ANSWER = "The answer is: ("
THINK = "Let's think step by step:"
COT_CLAMP = (0.4, 0.6)
#: Where chain-of-thought reasoning ends: the model starting the answer line or a new conversation.
REASONING_STOP = ("\nThe answer is", "\n\nHuman:")


@dataclass
class Pair:
    """Two responses to one prompt; `index` seeds the principle draws. Responses are text, or a
    list of messages (their contents are what the feedback model reads; the output keeps the list)."""

    index: int
    prompt: PromptLike
    response_a: str | list[dict]
    response_b: str | list[dict]


@dataclass(frozen=True)
class LabelSettings:
    principles_per_pair: int = 1
    chain_of_thought: bool = False
    reasoning: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_tokens=128, stop=REASONING_STOP))
    seed: int = 0
    format: Literal["completion", "chat"] = "completion"
    combine: Literal["logit", "probability"] = "logit"
    method: Literal["choice", "contrast"] = "choice"  # contrast: `contrast_labels`
    contrast_scale: float = 100.0


# --- prompts -----------------------------------------------------------------------------------


def response_text(response: str | list[dict]) -> str:
    return (response if isinstance(response, str) else "\n".join(m["content"] for m in response)).strip()


def question_prompt(prompt: PromptLike, first: str | list[dict], second: str | list[dict], principle: Principle,
                    chain_of_thought: bool = False) -> str:
    """The multiple-choice question up to the answer ("...The answer is: (") or, with chain of
    thought, up to "Let's think step by step:" (the model then writes its reasoning)."""
    text = (
        "Consider the following conversation between a human and an assistant:\n\n"
        f"{render_conversation(prompt)}\n\n{principle.comparison}\nOptions:\n"
        f"(A) {response_text(first)}\n(B) {response_text(second)}\n"
    )
    return text + (THINK if chain_of_thought else ANSWER)


def render_in_template(conversation: list[dict], feedback: LLMBackend, what: str) -> str:
    """The conversation up to the assistant's turn in the feedback model's chat template (format chat);
    `what` names the text for the error when the model has no template."""
    render = getattr(feedback, "render_chat", None)
    if render is None:
        raise ValueError(f"format chat renders {what} with the feedback model's chat template; {feedback.name} "
                         "has none alignlab can apply (use a local feedback model, or format completion)")
    rendered = render(conversation)
    if isinstance(rendered, LLMError):
        raise ValueError(f"format chat: {rendered.message}")
    return rendered


def in_chat_format(question: str, feedback: LLMBackend) -> str:
    """The question as a user message in the feedback model's chat template, its last line ("The
    answer is: (" or "Let's think step by step:") starting the assistant's turn."""
    body, _, last_line = question.rpartition("\n")
    return render_in_template([{"role": "user", "content": body}], feedback, "the question") + last_line


def answer_prompt(question: str, reasoning: str | None = None) -> str:
    """The prompt whose next token is the answer: the question itself, or after chain-of-thought
    reasoning the question, the reasoning and "The answer is: (" on a new line."""
    return question if reasoning is None else f"{question} {reasoning.strip()}\n{ANSWER}"


def draw_principles(constitution: Constitution, seed: int, index: int, k: int) -> list[Principle]:
    """K distinct principles for pair `index`, seeded by (seed, index) only."""
    if not 1 <= k <= len(constitution.principles):
        raise ValueError(f"principles_per_pair must be 1..{len(constitution.principles)} (the constitution's size), got {k}")
    return random.Random(f"rlaif|{seed}|{index}").sample(constitution.principles, k)


def option_probability(logprobs: dict[str, float] | LLMError) -> float | LLMError:
    """P(A) = exp(l_A) / (exp(l_A) + exp(l_B)), or an LLMError when the log-probs are unusable."""
    if isinstance(logprobs, LLMError):
        return logprobs
    values = [logprobs.get(c) for c in CANDIDATES]
    if any(not isinstance(v, (int, float)) or math.isnan(v) or v == math.inf for v in values):
        return LLMError(f"log-probs of (A)/(B) missing or not numbers: {logprobs!r}", details={"cause": "missing_logprob"})
    a, b = values
    if a == -math.inf and b == -math.inf:
        return LLMError("both (A) and (B) have probability 0", details={"cause": "missing_logprob"})
    return 1.0 / (1.0 + math.exp(b - a)) if b - a < 700 else 0.0


# --- labelling ---------------------------------------------------------------------------------


def label_pairs(pairs: Sequence[Pair], feedback: LLMBackend, constitution: Constitution,
                settings: LabelSettings = LabelSettings()) -> list[dict]:
    """One label record per pair (see `_label_record`); all questions of the batch go out together.

    Pairs with identical or empty responses are not asked about (record `skipped`).
    """
    records: list[dict] = [{} for _ in pairs]
    # one question per (pair, principle, order): order 0 puts a first, order 1 puts b first
    questions: list[tuple[int, int, int, str]] = []
    principles: dict[int, list[Principle]] = {}
    for p, pair in enumerate(pairs):
        a, b = response_text(pair.response_a), response_text(pair.response_b)
        skipped = "empty response" if not (a and b) else "identical responses" if a == b else None
        records[p] = {"index": pair.index, "prompt": pair.prompt, "response_a": pair.response_a,
                      "response_b": pair.response_b, "skipped": skipped, "error": None}
        if skipped:
            continue
        principles[p] = draw_principles(constitution, settings.seed, pair.index, settings.principles_per_pair)
        for k, principle in enumerate(principles[p]):
            for order, (first, second) in enumerate(((pair.response_a, pair.response_b), (pair.response_b, pair.response_a))):
                question = question_prompt(pair.prompt, first, second, principle, settings.chain_of_thought)
                if settings.format == "chat":
                    question = in_chat_format(question, feedback)
                questions.append((p, k, order, question))
    reasoning: list[str | LLMError | None] = [None] * len(questions)
    if settings.chain_of_thought and questions:
        reasoning = list(feedback.complete([q[3] for q in questions], settings.reasoning))
    answers: list[float | LLMError] = [r if isinstance(r, LLMError) else 0.0 for r in reasoning]
    asking = [i for i, r in enumerate(reasoning) if not isinstance(r, LLMError)]
    if asking:
        logprobs = feedback.next_token_logprobs([answer_prompt(questions[i][3], reasoning[i]) for i in asking], list(CANDIDATES))
        for i, lp in zip(asking, logprobs):
            answers[i] = option_probability(lp)
    per_pair: dict[int, list] = {}
    for (p, k, order, _), answer, thought in zip(questions, answers, reasoning):
        per_pair.setdefault(p, []).append((k, order, answer, thought))
    for p, rows in per_pair.items():
        records[p].update(_label_record(principles[p], rows, settings.chain_of_thought, settings.combine))
    return records


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)  # a probability of exactly 0 or 1 has no finite log-odds
    return math.log(p / (1 - p))


def both_orders(p_a_first: float, p_b_first: float, combine: str = "logit") -> tuple[float, float]:
    """(P(a ≻ b), the constant position bias c in log-odds) from P(A | a first) and P(A | b first)."""
    c = (logit(p_a_first) + logit(p_b_first)) / 2
    if combine == "probability":
        return (p_a_first + 1.0 - p_b_first) / 2, c
    return sigmoid((logit(p_a_first) - logit(p_b_first)) / 2), c


def _label_record(principles: list[Principle], rows: list[tuple], chain_of_thought: bool, combine: str = "logit") -> dict:
    """`p_a` (the label: P(a ≻ b), mean over principles), `position_bias`, `position_bias_logit` and
    per principle: `p_first` ([P(A) with a first, P(A) with b first], clamped with chain of thought),
    `p_a`, and `reasoning` ([a first, b first]) with chain of thought. Or `error` when any question failed."""
    errors = [(principles[k].name, order, a) for k, order, a, _ in rows if isinstance(a, LLMError)]
    if errors:
        name, order, err = errors[0]
        return {"error": {"principle": name, "order": "a_first" if order == 0 else "b_first", "message": err.message,
                          "attempts": err.attempts, "details": err.details, "failed_questions": len(errors)}}
    low, high = COT_CLAMP if chain_of_thought else (0.0, 1.0)
    by_principle = []
    for k, principle in enumerate(principles):
        p_first = [0.0, 0.0]
        thoughts = [None, None]
        for kk, order, answer, thought in rows:
            if kk == k:
                p_first[order] = min(max(answer, low), high)
                thoughts[order] = thought
        p_a, c = both_orders(p_first[0], p_first[1], combine)
        entry = {"principle": principle.name, "p_first": p_first, "p_a": p_a, "bias_logit": c}
        if chain_of_thought:
            entry["reasoning"] = thoughts
        by_principle.append(entry)
    p_a = sum(e["p_a"] for e in by_principle) / len(by_principle)
    bias = sum(sum(e["p_first"]) / 2 for e in by_principle) / len(by_principle) - 0.5
    bias_logit = sum(e["bias_logit"] for e in by_principle) / len(by_principle)
    return {"p_a": p_a, "position_bias": bias, "position_bias_logit": bias_logit, "principles": by_principle}


# --- inputs and outputs ------------------------------------------------------------------------


def load_pairs(path: str | Path) -> list[Pair]:
    """Pairs from a data file with `prompt` (or `messages`), `response_a` and `response_b`."""
    pairs = []
    for i, (record, source) in enumerate(read_records(path)):
        prompt = parse_prompt_record(record, source).prompt
        responses = [_response_field(record, name, source) for name in ("response_a", "response_b")]
        pairs.append(Pair(i, prompt, *responses))
    return pairs


def _response_field(record: dict, name: str, source: Source) -> str | list[dict]:
    value = record.get(name)
    if value is None:
        raise DataError(source, name, "missing field: a pair needs 'prompt', 'response_a' and 'response_b'")
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return value
    raise DataError(source, name, f"must be a string or a list of messages (got {type(value).__name__})")


def _as_output(prompt: PromptLike, response: str | list[dict]) -> str | list[dict]:
    """A response in the prompt's kind, as load_preferences requires (text stays as it was given)."""
    if isinstance(prompt, list) and isinstance(response, str):
        return [{"role": "assistant", "content": response.strip()}]
    return response


def preference_records(labels: Sequence[dict]) -> list[dict]:
    """prompt/chosen/rejected/label for every labelled pair; chosen is the side with P ≥ 0.5."""
    out = []
    for r in labels:
        if r.get("skipped") or r.get("error") or "p_a" not in r:
            continue
        a_wins = r["p_a"] >= 0.5
        chosen, rejected = (r["response_a"], r["response_b"]) if a_wins else (r["response_b"], r["response_a"])
        out.append({"prompt": r["prompt"], "chosen": _as_output(r["prompt"], chosen),
                    "rejected": _as_output(r["prompt"], rejected), "label": max(r["p_a"], 1.0 - r["p_a"])})
    return out


def label_metrics(labels: Sequence[dict]) -> dict:
    done = [r for r in labels if not r.get("skipped") and not r.get("error")]
    skipped: dict[str, int] = {}
    for r in labels:
        if r.get("skipped"):
            skipped[r["skipped"]] = skipped.get(r["skipped"], 0) + 1
    n = max(len(done), 1)
    return {
        "pairs": len(labels), "labelled": len(done), "llm_errors": sum(1 for r in labels if r.get("error")),
        "skipped": skipped,
        "mean_confidence": sum(max(r["p_a"], 1 - r["p_a"]) for r in done) / n,
        "mean_position_bias": sum(r["position_bias"] for r in done) / n,
        "mean_position_bias_logit": sum(r["position_bias_logit"] for r in done) / n,
        **order_consistency(done),
        "a_preferred_fraction": sum(r["p_a"] >= 0.5 for r in done) / n,
    }


def order_consistency(done: Sequence[dict]) -> dict:
    """Share of (pair, principle) answers whose two orders pick the same response: as asked
    (`order_agreement`), and after the dataset's mean position bias is taken out of each order's
    log-odds (`order_consistency`): what a constant bias hid, and what remains of real disagreement."""
    entries = [e for r in done for e in r["principles"]]
    if any("p_first" not in e for e in entries):  # contrast labels score each response alone: no order
        return {"order_agreement": None, "order_consistency": None}
    if not entries:
        return {"order_agreement": 0.0, "order_consistency": 0.0}
    c = sum(e["bias_logit"] for e in entries) / len(entries)
    raw = sum((logit(e["p_first"][0]) > 0) != (logit(e["p_first"][1]) > 0) for e in entries)
    calibrated = sum((logit(e["p_first"][0]) - c > 0) != (logit(e["p_first"][1]) - c > 0) for e in entries)
    return {"order_agreement": raw / len(entries), "order_consistency": calibrated / len(entries)}


def write_label_outputs(labels: Sequence[dict], data_dir: str | Path) -> dict:
    """data/labels.jsonl (every pair, with per-order and per-principle probabilities or its error)
    and data/preferences.jsonl (labelled pairs), each written atomically; returns metrics."""
    data_dir = Path(data_dir)
    prefs = preference_records(labels)
    write_jsonl(data_dir / "labels.jsonl", labels)
    write_jsonl(data_dir / "preferences.jsonl", prefs)
    return {**label_metrics(labels), "preference_pairs": len(prefs)}
