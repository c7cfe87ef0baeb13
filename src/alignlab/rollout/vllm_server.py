"""Sampling from a separately started `vllm serve`, with the policy's weights pushed to it.

The server runs where the user starts it (other GPUs, another machine that sees the same files):

    VLLM_SERVER_DEV_MODE=1 VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    vllm serve MODEL_DIR --logprobs-mode processed_logprobs [--enable-lora --max-lora-rank R]

`--logprobs-mode processed_logprobs` makes the reported log-probs alignlab's (see `vllm_backend`);
the logged sampler/trainer gap (`sampler/*`) shows at once when a server was started without it.
Samples come from `/v1/completions` with token ids in and out (`return_tokens_as_token_ids`), one
request per row, each with its own seed, sent together so that the server batches them.

Weight push, through the disk (`sync_dir`, a directory both sides see):
- a LoRA policy on a server started with `--enable-lora`: the adapter in peft's format, loaded under a
  new name (`/v1/load_lora_adapter`, runtime LoRA updating on) and the previous one unloaded; what
  vLLM's server offers for adapters on every platform;
- otherwise the merged model, re-read by the engine (`/collective_rpc` "reload_weights" with
  `weights_path`, dev mode on), then `/reset_prefix_cache`; every weight is written, a tied output
  head too (see `write_every_weight`). vLLM's in-memory transfer to a server
  (its NCCL and CUDA-IPC weight-transfer engines) needs GPUs and is not used here.
"""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from alignlab.rollout.base import Rollouts
from alignlab.rollout.vllm_backend import request_seeds, write_every_weight

TOKEN_PREFIX = "token_id:"  # how return_tokens_as_token_ids spells a token


class VLLMServerSettings(BaseModel):
    """Where the server is (`rollout_backend: vllm-server`)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field("http://127.0.0.1:8000", description="the running `vllm serve`'s address")
    served_model: str | None = Field(None, description="the model's name on the server; default: the stage's model")
    sync_dir: str | None = Field(None, description="where pushed weights are written for the server to read "
                                 "(a directory it sees too); default: a new temporary directory")
    parallel_requests: int = Field(64, gt=0, description="sampling requests in flight at once (one per row)")


class VLLMServerSampler:
    """A `Sampler` that draws from a running vLLM server at `url` serving `model` (its name there)."""

    def __init__(self, url: str, model: str, *, sync_dir: str | Path | None = None, parallel_requests: int = 64,
                 timeout_s: float = 600.0, transport: httpx.BaseTransport | None = None):
        self.url, self.base_model, self.model = url.rstrip("/"), model, model
        self.sync_dir = Path(sync_dir) if sync_dir is not None else Path(tempfile.mkdtemp(prefix="alignlab-vllm-sync-"))
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self.client = httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=parallel_requests),
                                   transport=transport)  # transport: a test's stand-in server
        self.parallel_requests, self.syncs, self.adapter = parallel_requests, 0, None
        self._post("GET", "/health")  # a wrong url fails here, not at the first iteration's samples

    def _post(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            response = self.client.request(method, self.url + path, json=body)
        except httpx.TransportError as err:
            raise ConnectionError(f"vLLM server {self.url}: {path} failed ({err}); is `vllm serve` running there?") from err
        if response.status_code >= 400:
            raise RuntimeError(f"vLLM server {self.url}{path}: HTTP {response.status_code}: {response.text[:500]}")
        try:
            return response.json()
        except ValueError:  # some endpoints answer in plain text ("Success: LoRA adapter ... added")
            return {"text": response.text}

    def sample(self, prompts: list[list[int]], settings, seed: int = 0) -> Rollouts:
        """One completion per prompt; `settings` is an `alignlab.rollout.SamplingSettings`."""
        row_seeds = request_seeds(settings, seed, len(prompts))

        def one(row: int) -> tuple[list[int], list[float], bool]:
            choice = self._post("POST", "/v1/completions", {
                "model": self.model, "prompt": list(prompts[row]), "max_tokens": settings.max_new_tokens,
                "temperature": settings.temperature, "top_p": 1.0, "top_k": -1, "seed": row_seeds[row],
                "logprobs": 0, "return_tokens_as_token_ids": True, "skip_special_tokens": False,
            })["choices"][0]
            tokens = choice["logprobs"]["tokens"]
            ids = [int(t.removeprefix(TOKEN_PREFIX)) for t in tokens]
            return ids, [float(x) for x in choice["logprobs"]["token_logprobs"]], choice["finish_reason"] == "stop"

        with ThreadPoolExecutor(max_workers=min(self.parallel_requests, max(len(prompts), 1))) as pool:
            rows = list(pool.map(one, range(len(prompts))))
        return Rollouts([list(p) for p in prompts], [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    def load_weights(self, model) -> None:
        """Push `model`'s current weights: its adapter when it has one, else the merged model."""
        from alignlab.models.lora import is_lora, merged_for_saving

        self.syncs += 1
        directory = self.sync_dir / f"sync-{self.syncs:06d}"
        if is_lora(model):
            model.save_pretrained(directory)  # the adapter and its config only
            name = f"policy-{self.syncs}"
            self._post("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(directory)})
            if self.adapter is not None:
                self._post("POST", "/v1/unload_lora_adapter", {"lora_name": self.adapter})
            self.adapter = self.model = name
        else:
            write_every_weight(merged_for_saving(model), directory)
            self._post("POST", "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(directory)}})
            self._post("POST", "/reset_prefix_cache")
        for old in self.sync_dir.glob("sync-*"):
            if old != directory:
                shutil.rmtree(old, ignore_errors=True)
