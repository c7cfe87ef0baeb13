"""alignlab: align language models (SFT, reward models, DPO, ...) offline on a CPU or at scale."""

__version__ = "0.1.0"
