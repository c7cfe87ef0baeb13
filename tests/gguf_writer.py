"""Write a small Hugging Face Llama as a GGUF file, as llama.cpp's converter lays one out, so that
the GGUF path is tested on a file made here (no model is downloaded): llama.cpp's tensor names, its
interleaved-rotary order of the query and key rows, the tokenizer as metadata (a byte-level BPE:
tokens, merges, special ids, chat template), the matrices quantized to Q8_0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _llama_cpp_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """The rows of a query/key projection in llama.cpp's rotary order (transformers undoes this)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_gguf(model_dir: Path, path: Path, chat_template: str | None = None) -> Path:
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(str(path), "llama")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))

    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["id"]: t["content"] for t in tokenizer["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3: control
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    by_name = {v: k for k, v in special.items()}
    writer.add_bos_token_id(by_name["<|bos|>"] if "<|bos|>" in by_name else config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    if chat_template:
        writer.add_chat_template(chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in load_file(str(Path(model_dir) / "model.safetensors")).items():
        data = tensor.to(torch.float32).numpy()
        if name.endswith("q_proj.weight"):
            data = _llama_cpp_rows(data, heads)
        elif name.endswith("k_proj.weight"):
            data = _llama_cpp_rows(data, kv_heads)
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if data.ndim == 2:  # matrices quantized, as a shipped model's are; norms stay float32
            writer.add_tensor(target, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(target, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
