"""Build a tokenizer and a small causal LM from scratch (for built-in tasks and tests).

Nothing here downloads anything: the tokenizer is trained on the given texts and the model is a
randomly initialised Hugging Face architecture built from a config, so everything it produces
saves and loads with plain `transformers`.
"""

from __future__ import annotations

from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from alignlab.models.fused import fuse_activations

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`, with distinct pad/bos/eos tokens.

    A pad token distinct from EOS matters: a reward model reads its score at the last non-pad
    token, and a pad equal to EOS would move that position.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, model_max_length=1024
    )


def new_causal_lm(
    tokenizer: PreTrainedTokenizerFast,
    arch: str = "gpt2",
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 256,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised causal LM of the given Hugging Face architecture (gpt2, llama, qwen2)."""
    special = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "gpt2":
        config = GPT2Config(
            n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special,
        )
    elif arch in ("llama", "qwen2"):
        cls = LlamaConfig if arch == "llama" else Qwen2Config
        config = cls(
            hidden_size=hidden_size, intermediate_size=hidden_size * 4, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, num_key_value_heads=num_heads,
            max_position_embeddings=max_positions, tie_word_embeddings=True, **special,
        )
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose gpt2, llama or qwen2")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    fuse_activations(model)  # gpt2's gelu_new as one kernel; the config keeps its name
    return model
