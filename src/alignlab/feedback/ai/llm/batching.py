"""`Batcher`: the server's queue that gathers concurrent requests into one model call at a time."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field

from alignlab.feedback.ai.llm.base import GenerationSettings, LLMError
from alignlab.feedback.ai.llm.generation import Generation
from alignlab.feedback.ai.llm.local import LocalLLM

log = logging.getLogger(__name__)


@dataclass
class _Job:
    prompt: str
    settings: GenerationSettings
    top_logprobs: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Runs generation jobs one model call at a time, batching the jobs that queued meanwhile.
    Jobs whose settings differ only in the seed share a call: the model samples each row with its
    own seed."""

    def __init__(self, llm: LocalLLM, max_batch: int):
        self.llm, self.max_batch = llm, max_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None

    async def generate(self, prompts: list[str], settings: GenerationSettings, top_logprobs: int,
                       n: int = 1) -> list[list[Generation | LLMError]]:
        """n answers for each prompt (choice k seeded with seed + k·1,000,003)."""
        if self._worker is None:  # started on first use, on the server's own event loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        loop = asyncio.get_running_loop()
        jobs = [[_Job(p, dataclasses.replace(settings, seed=(settings.seed + k * 1_000_003) % 2**63), top_logprobs,
                      loop.create_future()) for k in range(n)] for p in prompts]
        for job in (j for per_prompt in jobs for j in per_prompt):
            self._queue.put_nowait(job)
        return [list(await asyncio.gather(*(job.future for job in per_prompt))) for per_prompt in jobs]

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            pending = [await self._queue.get()]
            while len(pending) < self.max_batch and not self._queue.empty():
                pending.append(self._queue.get_nowait())
            groups: dict[tuple, list[_Job]] = {}
            for job in pending:
                groups.setdefault((dataclasses.replace(job.settings, seed=0), job.top_logprobs), []).append(job)
            for (settings, top), jobs in groups.items():
                try:
                    results = await asyncio.to_thread(self.llm.generate, [j.prompt for j in jobs], settings, top,
                                                      [j.settings.seed for j in jobs])
                except Exception as err:  # a bug or a broken model: fail these requests, keep serving
                    log.exception("generation failed")
                    results = [LLMError(f"generation failed: {type(err).__name__}: {err}", details={"cause": "model"})] * len(jobs)
                for job, result in zip(jobs, results):
                    if not job.future.done():  # the client may have gone away
                        job.future.set_result(result)
