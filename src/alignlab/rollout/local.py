"""Batched sampling from a local transformers model with its KV cache (CPU or GPU).

Prompts are sorted by length and left-padded into batches, so rows of similar length share a
batch and little compute goes to padding. `model.generate` numbers positions from the attention
mask (a left-padded row sees the positions it would see alone) and masks the padded keys, so a
row's distribution does not depend on what it was batched with.

Why `model.generate` and not a hand-written decode loop: bench/sampling.py timed both on the
quickstart-sized GPT-2 (128 prompts x 40 new tokens, one batch, one thread). The loop drew the
identical tokens and log-probs but ran only 0.98-1.08x as fast as generate over six runs
(medians of 5: 420-500 ms against 440-500 ms), short of the 1.2x that would pay for owning it.
The cost of `generate` is memory: `output_logits=True` keeps a float32 copy of every step's
logits, batch x new tokens x vocabulary x 4 bytes (64 x 512 x 150k is ~20 GB), so lower
`batch_size` for large vocabularies or long completions (GPU users sample with vLLM instead).

A batch that repeats prompts (k samples of each) prefills each distinct prompt once and hands
`generate` the copied cache (`alignlab.rollout.prefill`).

Each drawn token's log-prob is that of the tempered, untruncated distribution (see
`alignlab.rollout.base`). The returned completions hold the sampled ids up to and including EOS
when one was produced (no padding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch.distributed.fsdp import FSDPModule
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList

from alignlab.ops.forward_args import cache_keyword
from alignlab.rollout.base import Rollouts
from alignlab.rollout.draw import InverseCDFDraw
from alignlab.rollout.prefill import prefill_distinct


# With a static cache every batch width is a compiled shape: widths are rounded up to a multiple
# of this, so prompts of 1-16 tokens share one shape, 17-32 the next, and so on.
STATIC_WIDTH_STEP = 16


class SamplingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0, description="0: no top-k filter")
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(64, gt=0)
    draw: Literal["inverse_cdf", "multinomial"] = Field(
        "inverse_cdf", description="how generate draws a token: inverse CDF (one uniform per row; 0.1 ms against "
        "torch.multinomial's 2.7 ms on a [64, 1841] CPU batch), or torch.multinomial (transformers' own draw); "
        "the same distribution, other random streams")
    cache: Literal["dynamic", "static"] = Field(
        "dynamic", description="static: a preallocated KV cache, which generate compiles into CUDA graphs on a GPU "
        "(decoding 2-3x faster once compiled, ~20 s per new batch shape; prompts are padded to a multiple of "
        f"{STATIC_WIDTH_STEP} tokens to keep the shapes few). Same samples; no speed-up on a CPU")


class RowStop(Protocol):
    """A transformers stopping criterion for one `generate` call that remembers where it stopped
    each row: `halted_at[r]` is the index, in row r's completion, of the token it stopped after
    (None: it never stopped the row)."""

    halted_at: list[int | None]

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor: ...


StopRule = Callable[[list[int], Tensor, Tensor], RowStop]
"""Makes the `RowStop` of one batch from (the batch's prompt indices, its left-padded ids, mask)."""


class LocalSampler:
    """The `Sampler` for a model held in this process (the policy being trained, on CPU or GPU)."""

    def __init__(self, model: PreTrainedModel, pad_id: int, eos_id: int):
        self.model, self.pad_id, self.eos_id = model, pad_id, eos_id

    def sample(self, prompts: list[list[int]], settings: SamplingSettings, seed: int = 0) -> Rollouts:
        return sample(self.model, prompts, settings, pad_id=self.pad_id, eos_id=self.eos_id, seed=seed)


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    prompts: list[list[int]],
    settings: SamplingSettings,
    *,
    pad_id: int,
    eos_id: int,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
    stop_rule: StopRule | None = None,
) -> Rollouts:
    """Sample one completion per prompt (repeat a prompt to get several) with its log-probs.

    `stop_ids` are further tokens that end a row as EOS does (e.g. every token holding a newline,
    to sample one reasoning step); the completion keeps the stop token. `finished` stays "ended
    with EOS". `stop_rule` makes a stopping criterion for each batch (the guard's streaming
    classifier): a row it stops ends with the token it stopped after, and `finished` is False for it
    unless that token is EOS. A rule that never stops a row changes nothing. Deterministic per seed;
    the caller's random state (CPU, and the model's GPU) is left as it was.
    """
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty; a causal LM needs at least one token to start from")
    device = next(model.parameters()).device
    sharded = isinstance(model, FSDPModule)
    config, processors = _generation_config(settings, pad_id, [eos_id, *stop_ids])
    step = STATIC_WIDTH_STEP if settings.cache == "static" else 1
    ends = {eos_id, *stop_ids}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    completions: list[list[int]] = [[] for _ in prompts]
    logps: list[list[float]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with seeded(device, seed):
            for start in range(0, len(order), settings.batch_size):
                idx = order[start : start + settings.batch_size]
                batch = [prompts[i] for i in idx]
                ids, mask = left_pad(batch, pad_id, multiple_of=step)
                ids, mask = ids.to(device), mask.to(device)
                # k samples of one prompt: its prefill runs once (a static cache is generate's own).
                # A sharded policy's forwards are collectives: no extra prefill forward, and every
                # process keeps stepping until all are done (generate's synced_gpus)
                cache = prefill_distinct(model, batch, ids, mask) if settings.cache == "dynamic" and not sharded else None
                extra = {} if cache is None else {cache_keyword(model): cache}
                stop = stop_rule(idx, ids, mask) if stop_rule is not None else None
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                     logits_processor=processors, synced_gpus=sharded,
                                     stopping_criteria=StoppingCriteriaList([stop]) if stop else None, **extra)
                drawn = out.sequences[:, ids.shape[1] :]
                drawn_logps = tempered_logps(out.logits, drawn, settings.temperature)
                for row, i in enumerate(idx):
                    halted = stop.halted_at[row] if stop is not None else None
                    completions[i], logps[i] = _cut_at_stop(drawn[row].tolist(), drawn_logps[row].tolist(), ends,
                                                            halted)
    finally:
        model.train(was_training)
    finished = [bool(c) and c[-1] == eos_id for c in completions]
    return Rollouts([list(p) for p in prompts], completions, logps, finished)


def _generation_config(settings: SamplingSettings, pad_id: int,
                       end_ids: list[int]) -> tuple[GenerationConfig, LogitsProcessorList | None]:
    """generate's settings for `settings`, and the inverse-CDF draw when it is the one chosen."""
    common = dict(max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id,
                  eos_token_id=end_ids if len(end_ids) > 1 else end_ids[0], use_cache=True,
                  output_logits=True, return_dict_in_generate=True,
                  cache_implementation="static" if settings.cache == "static" else None)
    if settings.draw == "inverse_cdf":  # generate runs greedily over a processor that has drawn already
        return (GenerationConfig(do_sample=False, **common),
                LogitsProcessorList([InverseCDFDraw(settings.temperature, settings.top_k, settings.top_p)]))
    config = GenerationConfig(
        do_sample=True, temperature=settings.temperature,
        top_k=settings.top_k,  # 0 switches top-k off; None would mean transformers' default of 50
        top_p=settings.top_p, **common,
    )
    return config, None


def generate(
    model: PreTrainedModel,
    prompts: list[list[int]],
    settings: SamplingSettings,
    *,
    pad_id: int,
    eos_id: int,
    seed: int = 0,
) -> list[list[int]]:
    """The completion ids of `sample` (up to and including EOS, no padding); deterministic per seed."""
    return sample(model, prompts, settings, pad_id=pad_id, eos_id=eos_id, seed=seed).completion_ids


def left_pad(prompts: list[list[int]], pad_id: int, multiple_of: int = 1) -> tuple[Tensor, Tensor]:
    """`prompts` as left-padded `[B, T]` input_ids and attention_mask (on the CPU); T is the
    longest prompt rounded up to `multiple_of`."""
    width = -(-max(len(p) for p in prompts) // multiple_of) * multiple_of
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def tempered_logps(step_logits: tuple[Tensor, ...], drawn: Tensor, temperature: float) -> Tensor:
    """`[B, S]` log_softmax(logits / T) at the drawn ids, from generate's raw per-step logits.

    One step at a time, so no second `[B, S, V]` tensor is built next to the stored logits.
    """
    columns = [
        (logits.float() / temperature).log_softmax(-1).gather(-1, drawn[:, t : t + 1])
        for t, logits in enumerate(step_logits)
    ]
    return torch.cat(columns, dim=1)


@contextmanager
def seeded(device: torch.device, seed: int):
    """Seed the global generators `generate` draws from (CPU, and the model's CUDA device) and
    give the caller's states back on exit, so sampling neither depends on nor shifts them."""
    gpu = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpu):
        torch.random.default_generator.manual_seed(seed)
        for index in gpu:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _cut_at_stop(ids: list[int], logps: list[float], ends: set[int],
                 halted: int | None = None) -> tuple[list[int], list[float]]:
    """The ids up to and including the first end token or the token a stop rule halted after,
    whichever comes first (generate pads the rest), and their log-probs."""
    end = next((i + 1 for i, token in enumerate(ids) if token in ends), len(ids))
    if halted is not None:
        end = min(end, halted + 1)
    return ids[:end], logps[:end]
