"""`LocalLLM`: the LLM backend for a transformers causal LM held in this process (CPU or CUDA).

Tokenization follows `alignlab.data.tokenize`: the text is encoded without the tokenizer's own
special tokens, and BOS is prepended when the tokenizer has one and the text does not already
start with it (some chat templates write it). So a model fine-tuned by alignlab sees prompts here
exactly as it saw them in training.

Generation (`complete`, `chat`, and `generate` for the server) runs `model.generate` on batches of
`batch_size` prompts sorted by length and left-padded. Greedy when `temperature == 0`; otherwise
each row samples from its own generator, seeded from (settings.seed, the row's prompt ids), so a
sampled answer depends only on its prompt, settings and seed and never on which other prompts
shared its batch. That makes per-item caching sound; the flip side is that the same prompt twice
with the same seed gives the same text: vary the seed to draw several samples. Stop strings end
generation early (transformers' stop-string criterion) and the text is cut before the first one.

`next_token_logprobs` is exact, from one forward pass per batch of (prompt, candidate) rows:
log p(candidate's tokens | prompt), summed over the candidate's tokens when it has several. The
candidate's tokens are found by tokenizing prompt+candidate jointly (how the text would really be
tokenized) when the prompt's own tokens are a prefix of that; when they are not (a BPE merge across
the boundary, e.g. a prompt ending in a space and a candidate starting with a letter), prompt and
candidate are tokenized separately and concatenated, which is the continuation a model generating
after this prompt would have to produce.

Log-probs reported by `generate` are those of the model's raw distribution (log_softmax of the
logits, before temperature or top-p), as vLLM reports them by default.

With a `gate` (`alignlab.feedback.ai.llm.gate`, built by a guard), a prompt it refuses is not
generated for and an answer it stops is withheld: both are answered with the gate's message and
finish_reason "content_filter".

A prompt too long for the model's context (prompt + max_tokens, or prompt + candidate) is an
`LLMError` for that item; so is an error raised while generating a batch (e.g. CUDA out of
memory), for every item of that batch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from alignlab.data.templates import render_prompt
from alignlab.feedback.ai.llm.base import (
    GenerationSettings,
    LLMError,
    LogprobResult,
    Message,
    TextResult,
    check_candidates,
)
from alignlab.feedback.ai.llm.cache import CachedBatch, CallCache
from alignlab.feedback.ai.llm.gate import ReplyGate
from alignlab.feedback.ai.llm.generation import Generation, finish_row
from alignlab.feedback.ai.llm.sampling import RowSampler, row_seed
from alignlab.models.gguf import is_gguf, load_gguf
from alignlab.models.load import load_causal_lm, load_tokenizer, resolve_device
from alignlab.models.reference import model_fingerprint
from alignlab.ops.forward_args import takes
from alignlab.rollout.local import left_pad

log = logging.getLogger(__name__)


class LocalLLM:
    """A transformers causal LM as an `LLMBackend`.

    `model_or_path` is a hub id or saved directory (loaded with `load_causal_lm` /
    `load_tokenizer`), or an already loaded model, in which case `tokenizer` is required.
    `device=None` picks CUDA when present, else the CPU. `cache` keeps finished calls keyed by the
    model's weight fingerprint (for an in-memory model, taken once at the first cached call: do not
    share a cache with a model that is still being trained).
    """

    def __init__(
        self,
        model_or_path: str | Path | nn.Module,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        dtype: str = "float32",
        *,
        tokenizer: Any = None,
        cache: CallCache | None = None,
        trust_remote_code: bool = False,
        name: str | None = None,
        gate: ReplyGate | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if isinstance(model_or_path, nn.Module):
            if tokenizer is None:
                raise ValueError("a LocalLLM built from a loaded model needs its tokenizer (tokenizer=...)")
            self.source: str | None = None
            # A loaded model stays where it is unless a device is named.
            target = resolve_device(device) if device is not None else next(model_or_path.parameters()).device
            self.model = model_or_path.to(target)
            default_name = f"local:{type(model_or_path).__name__}"
        else:
            target = resolve_device(device)
            self.source = str(model_or_path)
            if is_gguf(model_or_path):  # read-only: the file itself, dequantized (nothing is written back)
                self.model, gguf_tokenizer = load_gguf(model_or_path, dtype=dtype, device=target)
                tokenizer = tokenizer or gguf_tokenizer
            else:
                tokenizer = tokenizer or load_tokenizer(model_or_path, trust_remote_code=trust_remote_code)
                self.model = load_causal_lm(model_or_path, dtype=dtype, device=target, trust_remote_code=trust_remote_code)
            default_name = f"local:{self.source}"
        self.model.eval()
        self.tokenizer = tokenizer
        self.device = target
        self.batch_size = batch_size
        self.dtype = dtype
        self.cache = cache
        self.gate = gate
        self.name = name or default_name
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(self.model, tokenizer)
        self.context_length = _context_length(self.model, tokenizer)
        self._identity: str | None = None
        self._takes_logits_to_keep = takes(self.model, "logits_to_keep")

    def __repr__(self) -> str:
        return f"LocalLLM({self.name!r}, device={str(self.device)!r}, dtype={self.dtype!r})"

    @property
    def identity(self) -> str:
        """What computes the answers, for cache keys: the weights' fingerprint and the dtype."""
        if self._identity is None:
            by_path = self.source is not None and not is_gguf(self.source)  # a GGUF file: its dequantized weights
            weights = model_fingerprint(self.source if by_path else self.model)
            self._identity = f"local|{weights}|{self.dtype}" + (f"|{self.gate.name}" if self.gate else "")
        return self._identity

    def _cached_batch(self, method: str, payloads: list[dict]) -> CachedBatch:
        # The identity (a weight fingerprint) is only computed when there is a cache to key.
        return CachedBatch(self.cache, self.identity if self.cache is not None else "", method, payloads)

    # -----------------------------------------------------------------------------------------
    # The LLMBackend calls

    def complete(self, prompts: Sequence[str], settings: GenerationSettings) -> list[TextResult]:
        payloads = [{"prompt": p, "settings": _settings_json(settings)} for p in prompts]
        batch = self._cached_batch("complete", payloads)
        todo = batch.todo
        generated = self.generate([prompts[i] for i in todo], settings) if todo else []
        for i, result in zip(todo, generated):
            batch.record(i, result.text if isinstance(result, Generation) else result)
        return batch.results()

    def chat(self, conversations: Sequence[list[Message]], settings: GenerationSettings) -> list[TextResult]:
        payloads = [{"messages": list(c), "settings": _settings_json(settings)} for c in conversations]
        batch = self._cached_batch("chat", payloads)
        rendered: dict[int, str] = {}
        for i in batch.todo:
            prompt = self.render_chat(conversations[i])
            if isinstance(prompt, LLMError):
                batch.record(i, prompt)
            else:
                rendered[i] = prompt
        order = list(rendered)
        generated = self.generate([rendered[i] for i in order], settings) if order else []
        for i, result in zip(order, generated):
            batch.record(i, result.text if isinstance(result, Generation) else result)
        return batch.results()

    @torch.no_grad()
    def next_token_logprobs(self, prompts: Sequence[str], candidates: Sequence[str]) -> list[LogprobResult]:
        candidates = check_candidates(candidates)
        payloads = [{"prompt": p, "candidates": candidates} for p in prompts]
        batch = self._cached_batch("next_token_logprobs", payloads)
        rows: list[tuple[int, str, list[int], int]] = []  # (item, candidate, full ids, candidate length)
        for i in batch.todo:
            prompt_ids = self.encode(prompts[i])
            item_rows = []
            for candidate in candidates:
                candidate_ids = self._candidate_ids(prompts[i], prompt_ids, candidate)
                item_rows.append((i, candidate, prompt_ids + candidate_ids, len(candidate_ids)))
            longest = max(len(row[2]) for row in item_rows)
            if longest > self.context_length:
                batch.record(i, LLMError(
                    f"prompt {i} with its longest candidate is {longest} tokens, more than the model's "
                    f"context of {self.context_length}", details={"cause": "input"},
                ))
            else:
                rows.extend(item_rows)
        answers: dict[int, dict[str, float]] = {}
        failed: dict[int, LLMError] = {}
        rows.sort(key=lambda row: len(row[2]))
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            try:
                values = self._candidate_logprobs([row[2] for row in chunk], [row[3] for row in chunk])
            except RuntimeError as err:  # e.g. out of memory: the items of this chunk fail, the rest go on
                for row in chunk:
                    failed[row[0]] = LLMError(f"forward pass failed: {err}", details={"cause": "model"})
                continue
            for row, value in zip(chunk, values):
                answers.setdefault(row[0], {})[row[1]] = value
        for i in {row[0] for row in rows}:
            batch.record(i, failed[i] if i in failed else {c: answers[i][c] for c in candidates})
        return batch.results()

    # -----------------------------------------------------------------------------------------
    # Building blocks (also used by the server)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as the model sees it: no added special tokens, BOS first when the
        tokenizer has one and the text does not start with it (the policy of alignlab.data.tokenize)."""
        ids = list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        bos_text, bos_id = self.tokenizer.bos_token, self.tokenizer.bos_token_id
        if bos_text and bos_id is not None and not text.startswith(bos_text):
            ids.insert(0, bos_id)
        return ids

    def render_chat(self, conversation: list[Message]) -> str | LLMError:
        """The conversation as prompt text ending with the generation prompt, rendered with the
        tokenizer's chat template (alignlab's DEFAULT_CHAT_TEMPLATE when it has none)."""
        problem = _conversation_problem(conversation)
        if problem:
            return LLMError(problem, details={"cause": "input"})
        try:
            return render_prompt(self.tokenizer, list(conversation))
        except Exception as err:  # a template can raise anything (jinja errors, its own raise_exception)
            return LLMError(f"cannot render the conversation with the chat template: {err}", details={"cause": "input"})

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], settings: GenerationSettings, top_logprobs: int = 0,
                 seeds: Sequence[int] | None = None) -> list[Generation | LLMError]:
        """Generate for each prompt text, with token-level log-probs (no cache: `complete` caches).
        `seeds[i]`, when given, replaces `settings.seed` for prompt i, so requests that differ only in
        their seed share one batch and each stays reproducible."""
        seeds = list(seeds) if seeds is not None else [settings.seed] * len(prompts)
        results: list[Generation | LLMError | None] = [None] * len(prompts)
        encoded: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            ids = self.encode(prompt)
            if not ids:
                results[i] = LLMError(f"prompt {i} is empty and the tokenizer has no BOS token to start from",
                                      details={"cause": "input"})
            elif len(ids) + settings.max_tokens > self.context_length:
                results[i] = LLMError(
                    f"prompt {i} is {len(ids)} tokens; with max_tokens={settings.max_tokens} that is more than "
                    f"the model's context of {self.context_length}", details={"cause": "input"},
                )
            else:
                encoded[i] = ids
        if self.gate is not None and self.gate.refuse is not None and encoded:
            asked = list(encoded)
            for i, refused in zip(asked, self.gate.refuse([encoded[i] for i in asked])):
                if refused:
                    results[i] = self.gate.withheld(len(encoded.pop(i)), 0)
        order = sorted(encoded, key=lambda i: len(encoded[i]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            try:
                generated = self._generate_batch([encoded[i] for i in chunk], settings, top_logprobs,
                                                 [seeds[i] for i in chunk])
            except RuntimeError as err:  # e.g. out of memory: this batch's items fail, the rest go on
                generated = [LLMError(f"generation failed: {err}", details={"cause": "model"}) for _ in chunk]
            for i, result in zip(chunk, generated):
                results[i] = result
        return results  # type: ignore[return-value]

    # -----------------------------------------------------------------------------------------

    def _generate_batch(self, prompt_ids: list[list[int]], settings: GenerationSettings, top_logprobs: int,
                        seeds: list[int]) -> list[Generation]:
        ids, mask = left_pad(prompt_ids, self.pad_id)
        config = GenerationConfig(
            do_sample=False,  # greedy; sampling is done by RowSampler, which leaves one token per row
            max_new_tokens=settings.max_tokens, pad_token_id=self.pad_id, eos_token_id=self.eos_ids,
            stop_strings=list(settings.stop) or None, use_cache=True, output_logits=True,
            return_dict_in_generate=True,
        )
        processors = None
        if settings.temperature > 0:
            row_seeds = [row_seed(seed, row) for seed, row in zip(seeds, prompt_ids)]
            processors = LogitsProcessorList([RowSampler(row_seeds, settings.temperature, settings.top_p, self.device)])
        stop = None
        if self.gate is not None and self.gate.stop_rule is not None:
            stop = self.gate.stop_rule(list(range(len(prompt_ids))), ids, mask)
        out = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=config,
            logits_processor=processors, tokenizer=self.tokenizer if settings.stop else None,
            stopping_criteria=StoppingCriteriaList([stop]) if stop is not None else None,
        )
        drawn = out.sequences[:, ids.shape[1] :].cpu()
        chosen, top = [], []
        for step, logits in enumerate(out.logits):  # one step at a time: no [B, S, V] copy
            logps = logits.float().log_softmax(-1)
            chosen.append(logps.gather(-1, drawn[:, step : step + 1].to(logps.device)).squeeze(-1).cpu())
            if top_logprobs:
                values, indices = logps.topk(min(top_logprobs, logps.shape[-1]), dim=-1)
                top.append((values.cpu(), indices.cpu()))
        answers = [
            finish_row(self.tokenizer, self.eos_ids, prompt_ids[row], drawn[row].tolist(),
                       [float(c[row]) for c in chosen],
                       [list(zip(t[1][row].tolist(), t[0][row].tolist())) for t in top], settings)
            for row in range(len(prompt_ids))
        ]
        for row, at in enumerate(stop.halted_at if stop is not None else []):
            if at is not None and at < answers[row].completion_tokens:  # stopped before the answer ended
                answers[row] = self.gate.withheld(len(prompt_ids[row]), at + 1)
        return answers

    @torch.no_grad()
    def prompt_logprobs(self, text: str) -> tuple[list[int], list[float | None]]:
        """The text's token ids and each token's log-prob given the tokens before it (None for the
        first): what an OpenAI-compatible server returns for `echo` with `max_tokens` 0."""
        ids = self.encode(text)[-self.context_length :]
        row = torch.tensor([ids], device=self.device)
        logits = self.model(input_ids=row).logits[0, :-1].float()
        logps = logits.log_softmax(-1).gather(-1, row[0, 1:, None]).squeeze(-1)
        return ids, [None, *logps.tolist()]

    def _candidate_ids(self, prompt: str, prompt_ids: list[int], candidate: str) -> list[int]:
        """The candidate's tokens after this prompt: from the joint tokenization when the prompt's
        tokens are a prefix of it, else the candidate tokenized on its own (see the module doc)."""
        joint = self.encode(prompt + candidate)
        if len(joint) > len(prompt_ids) and joint[: len(prompt_ids)] == prompt_ids:
            return joint[len(prompt_ids) :]
        return list(self.tokenizer(candidate, add_special_tokens=False, verbose=False)["input_ids"])

    def _candidate_logprobs(self, sequences: list[list[int]], candidate_lengths: list[int]) -> list[float]:
        """Sum of log p(token | everything before it) over the last `candidate_lengths[r]` tokens of
        each left-padded row. Left padding lines the candidates up at the end, so only the last
        max(length)+1 positions' logits are computed (`logits_to_keep`), never all of [B, T, V]."""
        ids, mask = left_pad(sequences, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # a left-padded row sees the positions it would alone
        keep = max(candidate_lengths) + 1
        extra = {"logits_to_keep": keep} if self._takes_logits_to_keep else {}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **extra).logits
        logits = logits[:, -keep:-1].float()  # the logits that predict the last keep-1 tokens
        targets = ids[:, -(keep - 1) :]
        logps = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, keep-1]
        width = keep - 1
        return [float(logps[row, width - n :].sum()) for row, n in enumerate(candidate_lengths)]


def _settings_json(settings: GenerationSettings) -> dict:
    return {"max_tokens": settings.max_tokens, "temperature": settings.temperature, "top_p": settings.top_p,
            "stop": list(settings.stop), "seed": settings.seed}


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and the model's generation EOS ids
    (chat models often list their end-of-turn token there)."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in ([tokenizer.eos_token_id], configured if isinstance(configured, list) else [configured]):
        ids.extend(i for i in value if isinstance(i, int) and i not in ids)
    if not ids:
        raise ValueError("neither the tokenizer nor the model names an EOS token; set tokenizer.eos_token")
    return ids


def _context_length(model: nn.Module, tokenizer: Any) -> int:
    config = getattr(model, "config", None)
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    length = getattr(tokenizer, "model_max_length", None)
    return length if isinstance(length, int) and 0 < length < 10**8 else 4096


def _conversation_problem(conversation: Any) -> str | None:
    if not isinstance(conversation, (list, tuple)) or not conversation:
        return "a conversation must be a non-empty list of messages"
    for k, message in enumerate(conversation):
        if not isinstance(message, dict):
            return f"message {k} is a {type(message).__name__}, not a dict with 'role' and 'content'"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                return f"message {k} has no string {key!r}"
    return None
