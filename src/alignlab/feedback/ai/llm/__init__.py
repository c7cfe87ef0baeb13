"""LLM backends behind one interface (`LLMBackend`): a local transformers model (`LocalLLM`) and
any OpenAI-compatible server (`OpenAICompatibleLLM`), with a cache of finished calls
(`CallCache`). The OpenAI-compatible server for local models is in `alignlab.feedback.ai.llm.server`
(imported on its own: it needs starlette and uvicorn)."""

from alignlab.feedback.ai.llm.base import (
    GenerationSettings,
    LLMBackend,
    LLMError,
    LogprobResult,
    Message,
    TextResult,
    is_error,
)
from alignlab.feedback.ai.llm.cache import CallCache
from alignlab.feedback.ai.llm.http import OpenAICompatibleLLM
from alignlab.feedback.ai.llm.generation import Generation
from alignlab.feedback.ai.llm.local import LocalLLM

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
