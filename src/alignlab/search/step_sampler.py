"""Sample the next reasoning step of many partial solutions from a local causal LM.

A partial solution is tokenized as SFT saw it: the prompt's ids, then the ids of the steps so
far each followed by a newline (prompt and completion are tokenized separately, so the prefix
holds the same tokens a whole sampled solution would). Sampling stops at the first token that
contains a newline, or at EOS; the step is the text before the newline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from alignlab.rollout import SamplingSettings, sample


@dataclass
class SampledStep:
    text: str
    ended_with_eos: bool


def newline_token_ids(tokenizer) -> list[int]:
    """Every vocabulary id whose text contains a newline (byte-level BPE may merge several)."""
    ids = [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]
    if not ids:
        raise ValueError("the tokenizer has no token holding a newline; steps cannot be separated")
    return ids


class StepSampler:
    """`expand` for `beam_search`: k sampled next steps for each (prompt index, steps) prefix."""

    def __init__(self, model, tokenizer, prompt_ids: Sequence[list[int]], settings: SamplingSettings,
                 seed: int = 0, is_final: Callable[[str], bool] = lambda step: False,
                 stop_ids: Sequence[int] | None = None):
        """`stop_ids` defaults to `newline_token_ids(tokenizer)` (a scan of the vocabulary: pass it
        in when building several samplers over one tokenizer)."""
        self.model, self.tokenizer, self.prompt_ids, self.is_final = model, tokenizer, prompt_ids, is_final
        self.settings, self.seed, self.calls = settings, seed, 0
        stops = newline_token_ids(tokenizer) if stop_ids is None else stop_ids
        self.stop_ids = [i for i in stops if i != tokenizer.eos_token_id]

    def prefix_ids(self, prompt_index: int, steps: Sequence[str]) -> list[int]:
        done = "".join(step + "\n" for step in steps)
        tail = self.tokenizer(done, add_special_tokens=False)["input_ids"] if done else []
        return list(self.prompt_ids[prompt_index]) + tail

    def sample_steps(self, prefixes: Sequence[tuple[int, Sequence[str]]], k: int) -> list[list[SampledStep]]:
        rows = [self.prefix_ids(p, steps) for p, steps in prefixes for _ in range(k)]
        # every call draws fresh randomness, reproducibly: the seed advances per call
        rollouts = sample(self.model, rows, self.settings, pad_id=self.tokenizer.pad_token_id,
                          eos_id=self.tokenizer.eos_token_id, seed=self.seed + self.calls, stop_ids=self.stop_ids)
        self.calls += 1
        texts = self.tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
        steps = [SampledStep(text.split("\n", 1)[0].strip(), finished)
                 for text, finished in zip(texts, rollouts.finished)]
        return [steps[i * k : (i + 1) * k] for i in range(len(prefixes))]

    def __call__(self, prefixes, k: int) -> list[list[tuple[str, bool]]]:
        """(step, final) options; a step is final when it ended with EOS or `is_final` says so."""
        return [[(s.text, s.ended_with_eos or self.is_final(s.text)) for s in options]
                for options in self.sample_steps(prefixes, k)]


__all__ = ["SampledStep", "StepSampler", "newline_token_ids"]
