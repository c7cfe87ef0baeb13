"""Contrast labels: AI preference labels from how a principle's persona shifts a response's likelihood.

The multiple-choice labeller (`labels`) needs a feedback model that reads two responses and answers
a question about them; a small model often cannot (SmolLM2-135M picks the same response whatever
the question asks, and the longer, compliant one). This labeller asks the model nothing: it scores
each response alone, as the continuation of the conversation under two system messages written for
the principle, one for an assistant that keeps it (`follow`) and one for an assistant that breaks it
(`violate`):

    d(r) = [log p(r | follow, prompt) − log p(r | violate, prompt)] / len(r)

the log-likelihood ratio of "r came from the follower rather than the violator", per character of r
(a rate: the sum grows with length, and a response that fits either persona better everywhere would
otherwise win by being long; characters, not tokens, so every backend measures the same thing).
P(a ≻ b) = sigmoid(scale · (d(a) − d(b))), averaged over the drawn principles; `scale` (100 by default)
reads the rates as the evidence of a response that many characters long. Each response is scored
on its own, so there is no order and no position bias to remove (reported as 0).

It is the labelling side of contrastive prompting (RLCD, Yang et al. 2023, generates pairs from a
positive and a negative prompt; here the two prompts score given responses instead). It needs only
`next_token_logprobs` of whole responses: a local model, or a server that scores a given text
(`echo`, as vLLM does).

Per principle the record keeps `contrast` ([d(a), d(b)]) and `p_a`; the record's `p_a` is the label,
in the same output format as the multiple-choice labeller (`labels.preference_records`).
"""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.feedback.ai.cai import PromptLike, render_conversation
from alignlab.feedback.ai.constitution import Constitution, Principle
from alignlab.feedback.ai.labels import LabelSettings, Pair, draw_principles, render_in_template, response_text
from alignlab.feedback.ai.llm.base import LLMBackend, LLMError
from alignlab.feedback.judgement import sigmoid


def require_personas(constitution: Constitution) -> None:
    """Contrast labels need `follow` and `violate` on every principle: the error names those without."""
    missing = [p.name for p in constitution.principles if not (p.follow and p.violate)]
    if missing:
        raise ValueError(f"method contrast needs `follow` and `violate` on every principle; constitution "
                         f"{constitution.name!r} lacks them on: {', '.join(missing)}")


def persona_prefix(persona: str, prompt: PromptLike, feedback: LLMBackend, format: str) -> str:
    """The conversation up to the assistant's reply with `persona` as its system message: in the
    feedback model's chat template (`chat`), or as plain "Human:/Assistant:" turns (`completion`)."""
    if format == "chat":
        conversation = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return render_in_template([{"role": "system", "content": persona}, *conversation], feedback,
                                  "the conversation under each persona")
    return f"{persona}\n\n{render_conversation(prompt)}\n\nAssistant:"


def contrast_rate(follow_logprob: float, violate_logprob: float, text: str) -> float:
    """d(r): the persona log-likelihood ratio per character of the response."""
    return (follow_logprob - violate_logprob) / max(len(text), 1)


def label_pairs_by_contrast(pairs: Sequence[Pair], feedback: LLMBackend, constitution: Constitution,
                            settings: LabelSettings = LabelSettings()) -> list[dict]:
    """One label record per pair, as `labels.label_pairs` writes them (skipped and error records
    alike); each (pair, principle) is one call scoring both responses under both personas."""
    require_personas(constitution)
    records = []
    for pair in pairs:
        a, b = response_text(pair.response_a), response_text(pair.response_b)
        skipped = "empty response" if not (a and b) else "identical responses" if a == b else None
        record = {"index": pair.index, "prompt": pair.prompt, "response_a": pair.response_a,
                  "response_b": pair.response_b, "skipped": skipped, "error": None}
        if not skipped:
            principles = draw_principles(constitution, settings.seed, pair.index, settings.principles_per_pair)
            record.update(_score_pair(pair.prompt, a, b, principles, feedback, settings))
        records.append(record)
    return records


def _score_pair(prompt: PromptLike, a: str, b: str, principles: list[Principle], feedback: LLMBackend,
                settings: LabelSettings) -> dict:
    lead = "" if settings.format == "chat" else " "  # "Assistant:" is followed by a space, the template is not
    candidates = [lead + a, lead + b]
    by_principle = []
    for principle in principles:
        prefixes = [persona_prefix(persona, prompt, feedback, settings.format)
                    for persona in (principle.follow, principle.violate)]
        follow, violate = feedback.next_token_logprobs(prefixes, candidates)
        failed = next((r for r in (follow, violate) if isinstance(r, LLMError)), None)
        if failed is not None:
            return {"error": {"principle": principle.name, "message": failed.message, "attempts": failed.attempts,
                              "details": failed.details}}
        rates = [contrast_rate(follow[c], violate[c], text) for c, text in zip(candidates, (a, b))]
        p_a = sigmoid(settings.contrast_scale * (rates[0] - rates[1]))
        by_principle.append({"principle": principle.name, "contrast": rates, "p_a": p_a})
    p_a = sum(e["p_a"] for e in by_principle) / len(by_principle)
    return {"p_a": p_a, "position_bias": 0.0, "position_bias_logit": 0.0, "principles": by_principle}
