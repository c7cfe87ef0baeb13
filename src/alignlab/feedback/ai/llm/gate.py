"""`ReplyGate`: what lets a guard refuse a request or stop an answer inside `LocalLLM` (and so the
server), without the model code knowing what a classifier is.

`refuse` takes the prompts' token ids and says which ones are not answered at all; `stop_rule`
makes a stopping criterion for each generate call (`alignlab.rollout.local.StopRule`), and an
answer it stops is withheld. Either way the reply is `message`, with finish_reason
"content_filter" (OpenAI's value for an answer its filters withheld) and no token log-probs: the
message is not something the model generated. `alignlab.guard.sampler.Guard.gate` builds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from alignlab.feedback.ai.llm.generation import Generation
from alignlab.rollout.local import StopRule


@dataclass
class ReplyGate:
    message: str
    refuse: Callable[[list[list[int]]], list[bool]] | None = None
    stop_rule: StopRule | None = None
    name: str = "gate"
    """what the gate is, for cache keys: a gated model's answers are not the bare model's"""

    def withheld(self, prompt_tokens: int, completion_tokens: int) -> Generation:
        """The reply in place of a refused request (no tokens generated) or a stopped answer."""
        return Generation(text=self.message, token_ids=[], token_logprobs=[], finish_reason="content_filter",
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
