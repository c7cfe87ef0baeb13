"""A stand-in for the parts of vLLM's offline API that `alignlab.rollout.VLLMSampler` calls.

No GPU or vLLM here, so tests put this module in `sys.modules["vllm"]`. It follows vLLM's
documented shapes: `LLM(model=dir, **engine_options)`, `LLM.generate(TokensPrompt list,
SamplingParams list)` returning, per request, `.outputs[0]` with `token_ids`, `logprobs` (one
{token_id: object with .logprob} per step) and `finish_reason` ("stop" or "length"),
`LLM.collective_rpc("reload_weights", kwargs=...)` loading the weights handed over (or re-reading a directory), and
`LLM.reset_prefix_cache()`. Underneath it samples with transformers on the CPU, so what it tests
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


class LLM:
    def __init__(self, model: str, logprobs_mode: str = "raw_logprobs", **options):
        self.path, self.logprobs_mode, self.options = model, logprobs_mode, options
        self.reloads, self.prefix_cache_resets = 0, 0
        self._load()
        ENGINES.append(self)

    def _load(self) -> None:
        from alignlab.models import load_causal_lm, load_tokenizer

        self.model, self.tokenizer = load_causal_lm(self.path), load_tokenizer(self.path)

    def generate(self, requests, params, use_tqdm: bool = True):
        from alignlab.rollout import SamplingSettings, sample

        assert self.logprobs_mode == "processed_logprobs", "alignlab needs the tempered log-probs"
        outputs = []
        for request, p in zip(requests, params):
            assert p.logprobs == 0 and p.top_k == -1 and p.top_p == 1.0
            drawn = sample(self.model, [request.prompt_token_ids],
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
        kwargs = kwargs or {}
        self.reloads += 1
        if "weights_iterator" in kwargs:
            self.model.load_state_dict(dict(kwargs["weights_iterator"]))
        else:
            self.path = kwargs.get("weights_path", self.path)
            self._load()

    def reset_prefix_cache(self) -> None:
        self.prefix_cache_resets += 1
