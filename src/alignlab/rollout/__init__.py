"""Generation backends behind one interface (local transformers now; vLLM for GPU users later)."""

from alignlab.rollout.local import SamplingSettings, generate

__all__ = ["SamplingSettings", "generate"]
