"""Model judges of pairs (the protocol and `Judgement` are in `feedback/judgement.py`):

- `RewardModelJudge`: p_a = σ(r_a − r_b), the Bradley–Terry probability under a reward model
  (each response scored after its prompt, tokenized as the reward model was trained);
- `LLMJudge`: an LLM answers a multiple-choice question, "(A)" or "(B)", and p_a comes from the
  next-token log-probabilities of "A" and "B" (normalised over the two). LLMs prefer one position
  (Zheng et al. 2023, "Judging LLM-as-a-judge"), so each pair is asked in both orders and the two
  estimates of p_a averaged; swapping A and B then gives exactly 1 − p_a.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from alignlab.data.examples import PromptLike
from alignlab.data.tokenize import tokenize_example
from alignlab.feedback.ai.constitution import Principle
from alignlab.feedback.ai.llm.base import LLMBackend, LLMError
from alignlab.feedback.judgement import (
    JudgeError,
    Judgement,
    JudgeResult,
    Winner,
    sigmoid,
    ties_first,
    winner_from_probability,
)
from alignlab.feedback.rewards.sources import RewardModelSource, ScoringBatch
from alignlab.models import load_tokenizer


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
        results, todo = ties_first(prompts, responses_a, responses_b)
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
        results, todo = ties_first(prompts, responses_a, responses_b)
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
