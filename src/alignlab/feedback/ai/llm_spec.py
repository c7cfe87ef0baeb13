"""Recipe settings for an LLM used as a feedback model, and `build_llm` to turn them into a backend.

In a recipe the feedback model is one of::

    feedback: {type: local, path: "@sft/model", device: cuda, batch_size: 16}
    feedback: {type: openai, base_url: "http://localhost:8000/v1", model: my-model,
               api_key_env: OPENAI_API_KEY, max_concurrency: 8, timeout_s: 60, max_retries: 3}

Either may add `cache: calls.sqlite` (a relative path lands in the stage's directory) so a re-run
pays nothing for calls it already made. `generation` settings (max_tokens, temperature, top_p)
are separate (`FeedbackGeneration`): they belong to the task, not to where the model runs.

`performance_fields` names the settings that change speed but never answers, so a stage can leave
them out of its resume key (raising max_concurrency after a slow run is not a different run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignlab.feedback.ai.llm.base import GenerationSettings, LLMBackend


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    cache: str | None = Field(None, description="SQLite file of finished calls; relative to the stage directory")


class LocalLLMSpec(_Spec):
    """A transformers model loaded into this process."""

    type: Literal["local"]
    path: str = Field(min_length=1, description="hub id or saved model directory")
    device: str | None = Field(None, description="None/auto: CUDA when present, else CPU")
    batch_size: int = Field(16, gt=0)
    dtype: str = "float32"


class OpenAILLMSpec(_Spec):
    """A model behind an OpenAI-compatible HTTP server (vLLM, TGI, llama.cpp, a hosted API)."""

    type: Literal["openai"]
    base_url: str = Field(min_length=1, description="e.g. http://localhost:8000/v1")
    model: str = Field(min_length=1)
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="name of the environment variable holding the key (never the key itself)"
    )
    max_concurrency: int = Field(8, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)


LLMSpec = Annotated[LocalLLMSpec | OpenAILLMSpec, Field(discriminator="type")]

#: Settings that change speed or where results are kept, never the answers.
PERFORMANCE_FIELDS = {"cache", "device", "batch_size", "max_concurrency", "timeout_s", "max_retries", "api_key_env"}


class FeedbackGeneration(BaseModel):
    """How the feedback model writes critiques, revisions and reasoning."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(128, gt=0)
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1)

    def settings(self, stop: tuple[str, ...] = (), seed: int = 0) -> GenerationSettings:
        return GenerationSettings(
            max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, stop=stop, seed=seed
        )


def answer_relevant(spec: LocalLLMSpec | OpenAILLMSpec) -> dict:
    """The spec without its performance fields: what a resume key should depend on."""
    return spec.model_dump(exclude=PERFORMANCE_FIELDS)


def build_llm(spec: LocalLLMSpec | OpenAILLMSpec, cache_dir: str | Path | None = None) -> LLMBackend:
    """The backend `spec` describes. A relative `cache` path is resolved against `cache_dir`."""
    from alignlab.feedback.ai.llm.cache import CallCache

    cache = None
    if spec.cache is not None:
        path = Path(spec.cache)
        if not path.is_absolute() and cache_dir is not None:
            path = Path(cache_dir) / path
        cache = CallCache(path)
    if isinstance(spec, LocalLLMSpec):
        from alignlab.feedback.ai.llm.local import LocalLLM

        return LocalLLM(spec.path, device=spec.device, batch_size=spec.batch_size, dtype=spec.dtype, cache=cache)
    from alignlab.feedback.ai.llm.http import OpenAICompatibleLLM

    return OpenAICompatibleLLM(
        spec.base_url, spec.model, api_key_env=spec.api_key_env, max_concurrency=spec.max_concurrency,
        timeout_s=spec.timeout_s, max_retries=spec.max_retries, cache=cache,
    )
