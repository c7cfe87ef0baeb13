"""A stand-in for the parts of vLLM's offline API that `alignlab.rollout.VLLMSampler` calls.

No GPU or vLLM here, so tests put this module in `sys.modules["vllm"]`. It follows vLLM's
documented shapes: `LLM(model=dir, **engine_options)`, `LLM.generate(TokensPrompt list,
SamplingParams list)` returning, per request, `.outputs[0]` with `token_ids`, `logprobs` (one
{token_id: object with .logprob} per step) and `finish_reason` ("stop" or "length"),
`LLM.collective_rpc("reload_weights", kwargs=...)` loading the weights handed over (or re-reading a directory), and
`LLM.reset_prefix_cache()`, `LLM.sleep(level)` / `LLM.wake_up(tags)` (its memory released and
mapped again by tag; waking a part twice fails, as vLLM's allocator does), and LoRA requests
(`vllm.lora.request.LoRARequest(name, int_id, path)`, an adapter in peft's format). Underneath it samples with transformers on the CPU, so what it tests
is VLLMSampler's conversions and when an online stage syncs the engine's weights, not vLLM.
"""

from __future__ import annotations

from types import SimpleNamespace

ENGINES: list["LLM"] = []


class SamplingParams:
    def __init__(self, **options):
        self.__dict__.update(options)


class TokensPrompt:
    def __init__(self, prompt_token_ids):
        self.prompt_token_ids = prompt_token_ids


class LoRARequest:
    def __init__(self, lora_name: str, lora_int_id: int, lora_path: str):
        assert lora_int_id > 0, "vLLM's LoRA ids start at 1"
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


class LLM:
    def __init__(self, model: str, logprobs_mode: str = "raw_logprobs", **options):
        self.path, self.logprobs_mode, self.options = model, logprobs_mode, options
        self.reloads, self.prefix_cache_resets = 0, 0
        self.events: list[str] = []
        self.asleep: set[str] = set()
        self.adapters: dict[int, object] = {}
        self._load()
        ENGINES.append(self)

    def sleep(self, level: int = 1) -> None:
        assert self.options.get("enable_sleep_mode"), "vLLM sleeps only an engine started with enable_sleep_mode"
        assert not self.asleep
        self.asleep = {"weights", "kv_cache"}
        self.events.append(f"sleep {level}")
        if level == 2:  # the weights are discarded: only a reload brings them back
            import torch

            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))

    def wake_up(self, tags: list[str] | None = None) -> None:
        tags = ["weights", "kv_cache"] if tags is None else tags
        assert set(tags) <= self.asleep, f"waking {tags} of an engine with {sorted(self.asleep)} asleep"
        self.asleep -= set(tags)
        self.events.append("wake " + ",".join(tags))

    def _adapter_model(self, request):
        import copy

        from peft import PeftModel

        if request.lora_int_id not in self.adapters:  # vLLM caches an adapter by its id
            self.adapters[request.lora_int_id] = PeftModel.from_pretrained(copy.deepcopy(self.model), request.lora_path).eval()
        return self.adapters[request.lora_int_id]

    def _load(self) -> None:
        from alignlab.models import load_causal_lm, load_tokenizer

        self.model, self.tokenizer = load_causal_lm(self.path), load_tokenizer(self.path)

    def generate(self, requests, params, use_tqdm: bool = True, lora_request=None):
        from alignlab.rollout import SamplingSettings, sample

        assert self.logprobs_mode == "processed_logprobs", "alignlab needs the tempered log-probs"
        assert not self.asleep, f"generate with {sorted(self.asleep)} asleep"
        assert lora_request is None or self.options.get("enable_lora"), "a LoRA request needs enable_lora"
        self.events.append("generate" + (f" lora {lora_request.lora_int_id}" if lora_request else ""))
        model = self._adapter_model(lora_request) if lora_request else self.model
        outputs = []
        for request, p in zip(requests, params):
            assert p.logprobs == 0 and p.top_k == -1 and p.top_p == 1.0
            drawn = sample(model, [request.prompt_token_ids],
                           SamplingSettings(max_new_tokens=p.max_tokens, temperature=p.temperature),
                           pad_id=self.tokenizer.pad_token_id, eos_id=self.tokenizer.eos_token_id, seed=p.seed)
            ids = drawn.completion_ids[0]
            steps = [{token: SimpleNamespace(logprob=logp)} for token, logp in zip(ids, drawn.logps[0])]
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(
                token_ids=ids, logprobs=steps, finish_reason="stop" if drawn.finished[0] else "length")]))
        return outputs

    def collective_rpc(self, method: str, kwargs: dict | None = None):
        # vLLM's in-place reload: tensors handed over in memory, or a directory to re-read
        assert method == "reload_weights"
        assert "weights" not in self.asleep, "reload into released weight memory"
        kwargs = kwargs or {}
        self.reloads += 1
        self.events.append("reload")
        if "weights_iterator" in kwargs:
            self.model.load_state_dict(dict(kwargs["weights_iterator"]))
        else:
            self.path = kwargs.get("weights_path", self.path)
            self._load()

    def reset_prefix_cache(self) -> None:
        self.prefix_cache_resets += 1
