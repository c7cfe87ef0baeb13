"""Shared fixtures: tiny tokenizers and models built locally (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads and lose a lot when the cores are shared;
# subprocesses (CLI, torchrun) inherit the setting through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

TINY_TEXTS = [
    "the film was a delight from start to finish and the cast shines",
    "a dull and tedious movie with a plot that goes nowhere",
    "the acting was superb but the pacing dragged in the middle",
    "i loved the soundtrack and the cinematography was stunning",
    "not the worst film of the year but close to it",
    "hello world this is a tiny corpus for a tiny tokenizer",
    "user: what is two plus two? assistant: four.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from alignlab.models.build import train_bpe_tokenizer

    return train_bpe_tokenizer(TINY_TEXTS, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny GPT-2 with its tokenizer, loadable by path like any hub model."""
    from alignlab.models.build import new_causal_lm

    path = tmp_path_factory.mktemp("tiny-gpt2")
    model = new_causal_lm(tiny_tokenizer, arch="gpt2", hidden_size=32, num_layers=2, num_heads=2)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    """The tiny model as a local feedback LLM (a test module may define its own `llm` instead)."""
    from alignlab.feedback.ai.llm import LocalLLM

    return LocalLLM(tiny_model_dir, device="cpu")
