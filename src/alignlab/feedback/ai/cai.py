"""Supervised Constitutional AI (SL-CAI): critique → revision chains, after Bai et al. 2022.

For each (red-team) prompt the policy's initial response is critiqued and revised by a feedback
model, `rounds` times; each round draws one principle of the constitution and asks its critique
request, then its revision request. The final revision is the SFT target, and (final revision ≻
initial response) a preference pair, as in Hugging Face's open reproduction.

Prompt format (`format="completion"`, the default: the paper's, sent with `LLMBackend.complete`)::

    Human: <prompt>

    Assistant: <response>

    CritiqueRequest: <principle.critique_request>

    Critique: <the model writes this>

    RevisionRequest: <principle.revision_request>

    Revision: <the model writes this>

The critique prompt ends at "Critique:"; the revision prompt is the critique prompt with the
critique filled in, ending at "Revision:". The constitution's few-shot `examples` (each rendered
as a complete chain, separated by a line of dashes) come before every request, to keep the model
in role. Round r > 1 critiques the previous round's revision: its conversation is the prompt with
that revision as the assistant's answer (the earlier rounds are not repeated, so prompts stay
short). A conversational prompt is written out turn by turn ("Human:", "Assistant:", "System:").

`format="chat"` (for chat-only endpoints) sends the same text as a conversation: the user quotes
the conversation with the CritiqueRequest, the assistant answers with the critique, the user asks
the RevisionRequest, the assistant answers with the revision; few-shot examples are earlier turns.

Failures: an `LLMError` for one item ends that item's chain (recorded in its `error` field, with
the step and round) and never the batch. Long runs go through `PartStore`, which writes each
finished batch to its own file, so a killed run resumes without redoing finished prompts.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alignlab.data.readers import read_records, write_jsonl
from alignlab.feedback.ai.constitution import Constitution, Example, Principle
from alignlab.feedback.ai.llm.base import GenerationSettings, LLMBackend, LLMError, Message

PromptLike = str | list[dict]
Format = Literal["completion", "chat"]

EXAMPLE_SEPARATOR = "\n\n-----\n\n"
#: Where a critique or revision ends: the model starting the next turn of the transcript.
STOP_STRINGS = (
    "\n\nHuman:", "\n\nAssistant:", "\n\nCritiqueRequest:", "\n\nCritique:",
    "\n\nRevisionRequest:", "\n\nRevision:", "\n\n-----",
)
_SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}


# --- rendering ---------------------------------------------------------------------------------


def render_conversation(prompt: PromptLike, response: str | None = None) -> str:
    """The conversation as "Human: …\\n\\nAssistant: …" turns; `response` as the last assistant turn."""
    turns = [("user", prompt)] if isinstance(prompt, str) else [(m["role"], m["content"]) for m in prompt]
    if response is not None:
        turns.append(("assistant", response))
    return "\n\n".join(f"{_SPEAKERS.get(role, role.capitalize())}: {content.strip()}" for role, content in turns)


def _critique_turn(prompt: PromptLike, response: str, principle: Principle) -> str:
    return f"{render_conversation(prompt, response)}\n\nCritiqueRequest: {principle.critique_request}"


def _revision_turn(principle: Principle) -> str:
    return f"RevisionRequest: {principle.revision_request}"


def _completion_chain(prompt: PromptLike, response: str, principle: Principle, critique: str | None,
                      revision: str | None = None) -> str:
    """The paper's transcript up to "Critique:" (critique None), "Revision:" (revision None) or complete."""
    text = f"{_critique_turn(prompt, response, principle)}\n\nCritique:"
    if critique is None:
        return text
    text += f" {critique.strip()}\n\n{_revision_turn(principle)}\n\nRevision:"
    return text if revision is None else f"{text} {revision.strip()}"


def _chat_chain(prompt: PromptLike, response: str, principle: Principle, critique: str | None,
                revision: str | None = None) -> list[Message]:
    messages = [{"role": "user", "content": _critique_turn(prompt, response, principle)}]
    if critique is not None:
        messages += [{"role": "assistant", "content": critique.strip()},
                     {"role": "user", "content": _revision_turn(principle)}]
        if revision is not None:
            messages.append({"role": "assistant", "content": revision.strip()})
    return messages


class CritiquePrompts:
    """Builds the critique and revision requests for one constitution, format and few-shot count."""

    def __init__(self, constitution: Constitution, format: Format = "completion", few_shot: int | None = None):
        if format not in ("completion", "chat"):
            raise ValueError(f"format must be 'completion' or 'chat', got {format!r}")
        self.constitution, self.format = constitution, format
        examples = constitution.examples if few_shot is None else constitution.examples[:few_shot]
        self.examples: list[Example] = list(examples)

    def critique(self, prompt: PromptLike, response: str, principle: Principle) -> str | list[Message]:
        """What the feedback model is asked to continue (completion) or answer (chat) with a critique."""
        return self._with_examples(prompt, response, principle, None)

    def revision(self, prompt: PromptLike, response: str, principle: Principle, critique: str) -> str | list[Message]:
        """The critique request with its critique filled in, then the revision request."""
        return self._with_examples(prompt, response, principle, critique)

    def _with_examples(self, prompt, response, principle, critique):
        if self.format == "chat":
            shots: list[Message] = []
            for ex in self.examples:
                shots += _chat_chain(ex.prompt, ex.response, self.constitution.principle(ex.principle), ex.critique, ex.revision)
            return shots + _chat_chain(prompt, response, principle, critique)
        shots_text = [
            _completion_chain(ex.prompt, ex.response, self.constitution.principle(ex.principle), ex.critique, ex.revision)
            for ex in self.examples
        ]
        return EXAMPLE_SEPARATOR.join([*shots_text, _completion_chain(prompt, response, principle, critique)])


def clean_answer(text: str) -> str:
    """The model's answer, cut at the first stop string (in case a backend ignored them) and stripped."""
    cuts = [text.find(s) for s in STOP_STRINGS if s in text]
    return (text[: min(cuts)] if cuts else text).strip()


def draw_principle(constitution: Constitution, seed: int, index: int, round_: int) -> Principle:
    """The principle for prompt `index` in round `round_` (1-based): one fresh draw, seeded by all three,
    so it does not depend on batching, on other prompts or on a restart."""
    return constitution.draw(random.Random(f"sl-cai|{seed}|{index}|{round_}"))


# --- chains ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CritiqueSettings:
    rounds: int = 1
    format: Format = "completion"
    few_shot: int | None = None  # None: all the constitution's examples
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_tokens=128))
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= 4:
            raise ValueError(f"rounds must be 1 to 4 (the paper's range), got {self.rounds}")


def critique_and_revise(
    indices: Sequence[int],
    prompts: Sequence[PromptLike],
    initial: Sequence[str | LLMError],
    feedback: LLMBackend,
    constitution: Constitution,
    settings: CritiqueSettings = CritiqueSettings(),
) -> list[dict]:
    """One chain record per prompt (see `new_chain`); all items of a round go to the backend together.

    `indices` are the prompts' positions in the whole dataset (they seed the principle draws).
    """
    builder = CritiquePrompts(constitution, settings.format, settings.few_shot)
    generation = GenerationSettings(
        max_tokens=settings.generation.max_tokens, temperature=settings.generation.temperature,
        top_p=settings.generation.top_p, stop=STOP_STRINGS if settings.format == "completion" else (),
        seed=settings.seed,
    )
    ask = feedback.complete if settings.format == "completion" else feedback.chat
    chains = [new_chain(i, p, r) for i, p, r in zip(indices, prompts, initial)]
    for round_ in range(1, settings.rounds + 1):
        alive = [c for c in chains if c["error"] is None]
        if not alive:
            break
        current = [_current_response(c) for c in alive]  # this round critiques the latest revision
        principles = [draw_principle(constitution, settings.seed, c["index"], round_) for c in alive]
        for chain, principle in zip(alive, principles):
            chain["rounds"].append({"round": round_, "principle": principle.name, "critique": None, "revision": None})
        critiques = ask([builder.critique(c["prompt"], r, p) for c, r, p in zip(alive, current, principles)], generation)
        revisable = []
        for chain, response, principle, critique in zip(alive, current, principles, critiques):
            if _record(chain, "critique", critique):
                revisable.append((chain, response, principle))
        revisions = ask(
            [builder.revision(c["prompt"], r, p, c["rounds"][-1]["critique"]) for c, r, p in revisable], generation
        ) if revisable else []
        for (chain, _, _), revision in zip(revisable, revisions):
            _record(chain, "revision", revision)
    for chain in chains:
        if chain["error"] is None:
            chain["final"] = chain["rounds"][-1]["revision"]
    return chains


def new_chain(index: int, prompt: PromptLike, initial: str | LLMError) -> dict:
    """A chain record: index, prompt, initial, rounds [{round, principle, critique, revision}],
    final (the last revision; None when the chain failed), error (None or {step, round, message, …})."""
    chain = {"index": index, "prompt": prompt, "initial": None, "rounds": [], "final": None, "error": None}
    if isinstance(initial, LLMError):
        chain["error"] = _error_record("initial", 0, initial)
    else:
        chain["initial"] = initial
    return chain


def _current_response(chain: dict) -> str:
    done = [r["revision"] for r in chain["rounds"] if r["revision"] is not None]
    return done[-1] if done else chain["initial"]


def _record(chain: dict, step: str, answer: str | LLMError) -> bool:
    """Store a critique/revision in the chain's last round; an error ends the chain. True if stored."""
    last = chain["rounds"][-1]
    if isinstance(answer, LLMError):
        chain["error"] = _error_record(step, last["round"], answer)
        return False
    last[step] = clean_answer(answer)
    return True


def _error_record(step: str, round_: int, error: LLMError) -> dict:
    return {"step": step, "round": round_, "message": error.message, "attempts": error.attempts,
            "details": error.details}


# --- outputs -----------------------------------------------------------------------------------


def as_response(prompt: PromptLike, text: str) -> str | list[dict]:
    """A response in the prompt's kind: an assistant message for a conversation; for a text prompt
    the stripped text after one space (how a model continues text), or none after whitespace."""
    text = text.strip()
    if isinstance(prompt, list):
        return [{"role": "assistant", "content": text}]
    return text if not prompt or prompt[-1].isspace() else f" {text}"


# --- resumable batches -------------------------------------------------------------------------


class ResumeMismatchError(RuntimeError):
    """Finished parts in a directory were written by a run with other inputs or settings."""


class PartStore:
    """A long per-item job's finished results, one file per batch, so a killed run loses nothing.

    Items 0..n-1 are cut into fixed batches of `batch_size`; batch b's records (one dict per item,
    with its `index`) go to `part-<b>.jsonl`, written atomically (temporary file, fsync, rename).
    A rerun reads the parts it finds and computes only the missing batches. Fixed batches keep a
    resumed run identical to an uninterrupted one (a batch's samples never depend on a kill).
    `key` names the inputs and settings; parts written under another key are an error, never mixed in.
    """

    MANIFEST = "manifest.json"

    def __init__(self, directory: str | Path, key: str, n_items: int, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.directory, self.n_items, self.batch_size = Path(directory), n_items, batch_size
        self.identity = {"key": key, "items": n_items, "batch_size": batch_size}
        self.resumed_batches = 0

    def batches(self) -> list[list[int]]:
        return [list(range(s, min(s + self.batch_size, self.n_items))) for s in range(0, self.n_items, self.batch_size)]

    def part_path(self, batch: int) -> Path:
        return self.directory / f"part-{batch:06d}.jsonl"

    def run(self, process: Callable[[list[int]], list[dict]]) -> list[dict]:
        """All records in item order: stored batches are read back, the others computed by
        `process(item indices)` and stored as each finishes."""
        self._check_manifest()
        records: list[dict] = []
        for b, indices in enumerate(self.batches()):
            path = self.part_path(b)
            if path.exists():
                batch_records = [record for record, _ in read_records(path)]
                self.resumed_batches += 1
            else:
                batch_records = process(indices)
                got = [r.get("index") for r in batch_records]
                if got != indices:
                    raise RuntimeError(f"batch {b}: expected records for items {indices}, got {got}")
                write_jsonl(path, batch_records)
            records.extend(batch_records)
        return records

    def remove(self) -> None:
        """Delete the parts (once the final files are written and the stage is marked done)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def _check_manifest(self) -> None:
        path = self.directory / self.MANIFEST
        if path.exists():
            found = json.loads(path.read_text(encoding="utf-8"))
            if found != self.identity:
                raise ResumeMismatchError(
                    f"{self.directory} holds finished batches of a run with other inputs or settings "
                    f"({found} here, {self.identity} now); delete that directory to start over"
                )
            return
        write_jsonl(path, [self.identity])  # one JSON line is a JSON document; written atomically


def resume_key(*parts: object) -> str:
    """A short hash of JSON-able parts (settings, file fingerprints), for `PartStore`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

