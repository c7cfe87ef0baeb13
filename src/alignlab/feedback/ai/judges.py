"""Pairwise judges: which of two responses to the same prompt is better?

One protocol for every judge::

    judge.judge(prompts, responses_a, responses_b) -> list[Judgement | JudgeError]

one result per pair, in order. A `Judgement` holds p_a = P(A is better) in [0, 1] and a hard
winner ("a", "b" or "tie"); a `JudgeError` in a slot says why that one pair could not be judged
(the rest are unaffected, and callers count the errors). Prompts and responses are text or
conversations (lists of {"role", "content"} messages), as everywhere in alignlab. Two identical
responses are a tie (p_a = 0.5) without asking anyone.

Judges:

- `RewardModelJudge`: p_a = σ(r_a − r_b), the Bradley–Terry probability under a reward model
  (each response scored after its prompt, tokenized as the reward model was trained);
- `LLMJudge`: an LLM answers a multiple-choice question, "(A)" or "(B)", and p_a comes from the
  next-token log-probabilities of "A" and "B" (normalised over the two). LLMs prefer one position
  (Zheng et al. 2023, "Judging LLM-as-a-judge"), so each pair is asked in both orders and the two
  estimates of p_a averaged; swapping A and B then gives exactly 1 − p_a;
- `HumanLabelsJudge`: looks each pair up in people's labels (a preference file, as the labelling
  app exports it), in either order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from alignlab.data.formats import PreferenceExample, PromptLike, load_preferences
from alignlab.data.tokenize import tokenize_example
from alignlab.feedback.ai.constitution import Principle
from alignlab.feedback.ai.llm.base import LLMBackend, LLMError
from alignlab.feedback.rewards.sources import RewardModelSource, ScoringBatch
from alignlab.models import load_tokenizer

Winner = Literal["a", "b", "tie"]


@dataclass
class Judgement:
    """The verdict on one pair: p_a = P(response A is better than B), and the hard winner."""

    p_a: float
    winner: Winner | None = None  # None: derived from p_a (see `outcome`)
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_a <= 1.0:  # also refuses NaN
            raise ValueError(f"p_a must be a probability in [0, 1], got {self.p_a}")

    @property
    def outcome(self) -> float:
        """1 when A wins, 0.5 for a tie, 0 when B wins: the winner, else the side p_a favours."""
        winner = self.winner or winner_from_probability(self.p_a)
        return {"a": 1.0, "tie": 0.5, "b": 0.0}[winner]


@dataclass
class JudgeError:
    """Why one pair could not be judged."""

    message: str
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


JudgeResult = Judgement | JudgeError


@runtime_checkable
class PairwiseJudge(Protocol):
    name: str

    def judge(
        self, prompts: Sequence[PromptLike], responses_a: Sequence[PromptLike], responses_b: Sequence[PromptLike]
    ) -> list[JudgeResult]: ...


def winner_from_probability(p_a: float) -> Winner:
    return "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"


def sigmoid(x: float) -> float:
    """σ(x) without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _check_lengths(prompts: Sequence, responses_a: Sequence, responses_b: Sequence) -> None:
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(
            f"a judge needs one prompt per pair: got {len(prompts)} prompts, {len(responses_a)} responses A "
            f"and {len(responses_b)} responses B"
        )


def _ties_first(
    prompts: Sequence, responses_a: Sequence, responses_b: Sequence
) -> tuple[list[JudgeResult | None], list[int]]:
    """Results with identical pairs already decided as ties, and the indices still to judge."""
    _check_lengths(prompts, responses_a, responses_b)
    results: list[JudgeResult | None] = [None] * len(prompts)
    todo = []
    for i, (a, b) in enumerate(zip(responses_a, responses_b)):
        if a == b:
            results[i] = Judgement(0.5, "tie", {"identical": True})
        else:
            todo.append(i)
    return results, todo


# --------------------------------------------------------------------------- reward model


class RewardModelJudge:
    """p_a = σ(r_a − r_b) under a reward model; the winner is the side with the higher reward.

    Each (prompt, response) is tokenized like a preference pair in reward-model training
    (`alignlab.data.tokenize`: chat template for conversations, BOS, EOS appended), so the model
    scores text the way it learned to. A text response to a conversational prompt is taken as the
    assistant's reply. A pair whose prompt is too long is a JudgeError.
    """

    name = "reward_model"

    def __init__(
        self,
        path_or_model,
        tokenizer=None,
        device=None,
        batch_size: int = 32,
        max_length: int = 1024,
        max_prompt_length: int = 512,
    ):
        if tokenizer is None:
            if not isinstance(path_or_model, (str, Path)):
                raise ValueError("a RewardModelJudge built from a loaded model needs its tokenizer")
            tokenizer = load_tokenizer(path_or_model)
        self.tokenizer = tokenizer
        self.source = RewardModelSource(path_or_model, tokenizer, device=device, batch_size=batch_size)
        self.max_length, self.max_prompt_length = max_length, max_prompt_length

    def rewards(self, prompts: Sequence[PromptLike], responses: Sequence[PromptLike]) -> list[float | JudgeError]:
        """The reward of each (prompt, response), or a JudgeError for one that cannot be tokenized."""
        rows: list[tuple[list[int], list[int]]] = []
        places: list[int] = []
        out: list[float | JudgeError | None] = [None] * len(prompts)
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            if isinstance(prompt, list) and isinstance(response, str):
                response = [{"role": "assistant", "content": response}]
            try:
                row, _ = tokenize_example(self.tokenizer, prompt, response, self.max_length, self.max_prompt_length)
            except (ValueError, TypeError) as err:  # DataError is a ValueError
                out[i] = JudgeError(f"cannot tokenize for the reward model: {err}")
                continue
            cut = row.loss_mask.index(1)
            rows.append((row.input_ids[:cut], row.input_ids[cut:]))
            places.append(i)
        if rows:
            batch = ScoringBatch(
                prompts=[""] * len(rows), completions=[""] * len(rows),
                prompt_ids=[r[0] for r in rows], completion_ids=[r[1] for r in rows], finished=[True] * len(rows),
            )
            for i, score in zip(places, self.source.score(batch)):
                out[i] = float(score) if math.isfinite(score) else JudgeError(f"reward model gave {score}")
        return out  # type: ignore[return-value]  # every slot is filled above

    def judge(self, prompts, responses_a, responses_b) -> list[JudgeResult]:
        results, todo = _ties_first(prompts, responses_a, responses_b)
        both = self.rewards([prompts[i] for i in todo] * 2, [responses_a[i] for i in todo] + [responses_b[i] for i in todo])
        for k, i in enumerate(todo):
            r_a, r_b = both[k], both[k + len(todo)]
            if isinstance(r_a, JudgeError) or isinstance(r_b, JudgeError):
                bad = r_a if isinstance(r_a, JudgeError) else r_b
                results[i] = JudgeError(bad.message)
                continue
            winner: Winner = "a" if r_a > r_b else "b" if r_b > r_a else "tie"
            results[i] = Judgement(sigmoid(r_a - r_b), winner, {"reward_a": r_a, "reward_b": r_b})
        return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- LLM


DEFAULT_QUESTION = "Which response is more helpful?"

DEFAULT_TEMPLATE = (
    "Consider the following conversation between a human and an AI assistant.\n\n"
    "{conversation}\n\n"
    "{question}\n"
    "Options:\n"
    "(A) {response_a}\n"
    "(B) {response_b}\n"
    "The answer is: ("
)


def render_conversation(prompt: PromptLike) -> str:
    """A prompt as plain text for a judge: text as it is, messages as "Role: content" lines."""
    if isinstance(prompt, str):
        return f"Human: {prompt}"
    names = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}
    return "\n".join(f"{names.get(m['role'], m['role'].title())}: {m['content']}" for m in prompt)


def render_response(response: PromptLike) -> str:
    if isinstance(response, str):
        return response.strip()
    return "\n".join(m["content"] for m in response).strip()


class LLMJudge:
    """A multiple-choice question to an LLM: p_a from the log-probs of "A" and "B" as the next token.

    The prompt (`template`, placeholders {conversation}, {question}, {response_a}, {response_b})
    follows Constitutional AI's feedback format (Bai et al. 2022) and ends with "The answer is: (".
    P(A) = exp(l_A) / (exp(l_A) + exp(l_B)) = σ(l_A − l_B). With `both_orders` (the default) the
    pair is also asked with the responses swapped, and p_a = (P(A | a first) + P(B | a second)) / 2;
    `details` keeps both estimates ("p_a_when_first", "p_a_when_second"), whose difference measures
    the judge's position bias. An LLMError in either order makes that pair a JudgeError.

    `question` is a string or a constitution `Principle` (its comparison question is asked).
    """

    def __init__(
        self,
        backend: LLMBackend,
        question: str | Principle = DEFAULT_QUESTION,
        template: str = DEFAULT_TEMPLATE,
        both_orders: bool = True,
    ):
        self.backend = backend
        self.question = question.comparison if isinstance(question, Principle) else question
        if not self.question.strip():
            raise ValueError("the judge's question is empty")
        for slot in ("{conversation}", "{question}", "{response_a}", "{response_b}"):
            if slot not in template:
                raise ValueError(f"the judge's template lacks the placeholder {slot}")
        self.template = template
        self.both_orders = both_orders
        self.name = f"llm:{getattr(backend, 'name', type(backend).__name__)}"

    def prompt(self, prompt: PromptLike, first: PromptLike, second: PromptLike) -> str:
        """The text the LLM completes, with `first` shown as (A) and `second` as (B)."""
        return self.template.format(
            conversation=render_conversation(prompt), question=self.question,
            response_a=render_response(first), response_b=render_response(second),
        )

    def judge(self, prompts, responses_a, responses_b) -> list[JudgeResult]:
        results, todo = _ties_first(prompts, responses_a, responses_b)
        texts = [self.prompt(prompts[i], responses_a[i], responses_b[i]) for i in todo]
        if self.both_orders:
            texts += [self.prompt(prompts[i], responses_b[i], responses_a[i]) for i in todo]
        answers = self.backend.next_token_logprobs(texts, ["A", "B"]) if texts else []
        if len(answers) != len(texts):
            raise RuntimeError(f"{self.name} returned {len(answers)} answers for {len(texts)} prompts")
        for k, i in enumerate(todo):
            first = _p_first_option(answers[k])
            second = _p_first_option(answers[k + len(todo)]) if self.both_orders else None
            problems = [p for p in (first, second) if isinstance(p, JudgeError)]
            if problems:
                results[i] = JudgeError("; ".join(p.message for p in problems))
                continue
            if second is None:
                results[i] = Judgement(first, winner_from_probability(first), {"p_a_when_first": first})
                continue
            p_a = (first + (1.0 - second)) / 2
            results[i] = Judgement(
                p_a, winner_from_probability(p_a), {"p_a_when_first": first, "p_a_when_second": 1.0 - second}
            )
        return results  # type: ignore[return-value]


def _p_first_option(answer) -> float | JudgeError:
    """P("A") normalised over {"A", "B"}, from one next_token_logprobs answer."""
    if isinstance(answer, LLMError):
        return JudgeError(f"LLM error: {answer.message}", {"attempts": answer.attempts, **answer.details})
    try:
        l_a, l_b = float(answer["A"]), float(answer["B"])
    except (KeyError, TypeError, ValueError):
        return JudgeError(f"LLM answer lacks log-probs of 'A' and 'B': {answer!r}")
    if math.isnan(l_a) or math.isnan(l_b) or (l_a == -math.inf and l_b == -math.inf):
        return JudgeError(f"LLM gave no usable log-probs for 'A' and 'B' ({l_a}, {l_b})")
    if l_a == math.inf or l_b == math.inf:
        return JudgeError(f"LLM gave an infinite log-prob ({l_a}, {l_b})")
    return sigmoid(l_a - l_b)


# --------------------------------------------------------------------------- human labels


def pair_key(prompt: PromptLike, first: PromptLike, second: PromptLike) -> str:
    """One string per (prompt, first, second), text or conversations alike."""
    return json.dumps([prompt, first, second], ensure_ascii=False, sort_keys=True, separators=(",", ":"))


class PairLabels:
    """Preference labels looked up by content: P(a ≻ b) for a (prompt, a, b) given in either order.

    A pair labelled several times (by several people, or in both orders) gets the mean of its
    labels, each turned to P(a ≻ b) first.
    """

    def __init__(self, examples: Iterable[PreferenceExample], where: str = "labels"):
        self.where = where
        self.labels: dict[str, list[float]] = {}
        for ex in examples:
            self.labels.setdefault(pair_key(ex.prompt, ex.chosen, ex.rejected), []).append(ex.label)

    @classmethod
    def from_file(cls, path: str | Path) -> PairLabels:
        """Labels from a preference file (prompt/chosen/rejected, optional soft `label`). An empty
        response is a valid answer to judge (a tiny model often ends at once), so it is accepted."""
        return cls(load_preferences(path, allow_empty_responses=True), where=str(path))

    def __len__(self) -> int:
        return sum(len(v) for v in self.labels.values())

    def keys_of(self, prompt: PromptLike, a: PromptLike, b: PromptLike) -> tuple[str, str]:
        """The two keys a pair may be stored under: (a, b) and (b, a)."""
        return pair_key(prompt, a, b), pair_key(prompt, b, a)

    def lookup(self, prompt: PromptLike, a: PromptLike, b: PromptLike) -> tuple[float, int] | None:
        """(P(a ≻ b), number of labels) or None when the pair was never labelled."""
        forward, backward = self.keys_of(prompt, a, b)
        values = list(self.labels.get(forward, [])) + [1.0 - v for v in self.labels.get(backward, [])]
        if not values:
            return None
        return sum(values) / len(values), len(values)


class HumanLabelsJudge:
    """People's labels as a judge: each pair is looked up (in either order) in a preference file,
    e.g. the export of `alignlab label`. p_a is the label turned to P(a ≻ b) (1 or 0 for a hard
    label, 0.5 for a tie, the mean over several labels); a pair nobody labelled is a JudgeError."""

    name = "human"

    def __init__(self, path_or_labels: str | Path | PairLabels):
        self.labels = path_or_labels if isinstance(path_or_labels, PairLabels) else PairLabels.from_file(path_or_labels)

    def judge(self, prompts, responses_a, responses_b) -> list[JudgeResult]:
        results, todo = _ties_first(prompts, responses_a, responses_b)
        for i in todo:
            found = self.labels.lookup(prompts[i], responses_a[i], responses_b[i])
            if found is None:
                results[i] = JudgeError(f"no human label for this pair in {self.labels.where}")
            else:
                p_a, count = found
                results[i] = Judgement(p_a, winner_from_probability(p_a), {"labels": count})
        return results  # type: ignore[return-value]
