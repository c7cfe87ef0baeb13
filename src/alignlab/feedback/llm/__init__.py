"""LLM backends behind one interface (`LLMBackend`): a local transformers model (`LocalLLM`) and
any OpenAI-compatible server (`OpenAICompatibleLLM`), with a cache of finished calls
(`CallCache`). The OpenAI-compatible server for local models is in `alignlab.feedback.llm.server`
(imported on its own: it needs starlette and uvicorn)."""

from alignlab.feedback.llm.base import (
    GenerationSettings,
    LLMBackend,
    LLMError,
    LogprobResult,
    Message,
    TextResult,
    is_error,
)
from alignlab.feedback.llm.cache import CallCache
from alignlab.feedback.llm.http import OpenAICompatibleLLM
from alignlab.feedback.llm.local import Generation, LocalLLM

__all__ = [
    "CallCache",
    "Generation",
    "GenerationSettings",
    "LLMBackend",
    "LLMError",
    "LocalLLM",
    "LogprobResult",
    "Message",
    "OpenAICompatibleLLM",
    "TextResult",
    "is_error",
]
