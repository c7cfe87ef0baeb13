"""Generation backends behind one interface: local transformers (CPU/GPU) and vLLM (GPU, optional).

Every backend is a `Sampler` returning `Rollouts` (prompt and completion ids, the sampler's
log-prob of each completion token, finished flags); `to_batch` turns them into training tensors
aligned with `alignlab.ops.token_logps`, and `logp_mismatch` compares sampler and trainer
log-probs. `VLLMSampler` imports vLLM only when constructed (pip install alignlab[vllm]).
"""

from alignlab.rollout.base import Rollouts, Sampler, logp_mismatch, to_batch
from alignlab.rollout.local import LocalSampler, SamplingSettings, generate, sample
from alignlab.rollout.vllm_backend import VLLMSampler

__all__ = [
    "LocalSampler",
    "Rollouts",
    "Sampler",
    "SamplingSettings",
    "VLLMSampler",
    "generate",
    "logp_mismatch",
    "sample",
    "to_batch",
]
