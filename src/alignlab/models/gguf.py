"""GGUF files (llama.cpp's format, as chat models ship in packages) as Hugging Face models.

transformers reads a GGUF file (with the `gguf` package) into an ordinary model with its tokenizer
and chat template, its quantized weights expanded to floats. Training needs a directory: a model
loaded that way refuses `save_pretrained` ("quantized with gguf and is not serializable") while its
GGUF quantizer is attached, although every weight is already a plain float tensor, so `convert_gguf`
detaches it and saves. Read-only uses (a feedback model, `serve-llm`) may load the file directly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

CONVERT_HINT = "convert it once with `alignlab convert-gguf {path} OUT_DIR` and pass OUT_DIR"


def is_gguf(name_or_path: str | Path) -> bool:
    path = Path(str(name_or_path)).expanduser()
    return path.suffix.lower() == ".gguf" and path.is_file()


def load_gguf(path: str | Path, dtype: str = "float32", device: str | torch.device | None = None):
    """(model, tokenizer) from a GGUF file, dequantized to `dtype`, in eval mode, without its quantizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.models.load import resolve_dtype

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=resolve_dtype(dtype))
    _detach_quantizer(model)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def _detach_quantizer(model: nn.Module) -> None:
    """What makes transformers treat the model as quantized, gone: its weights are floats already."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def convert_gguf(path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write the GGUF model at `path` to `out_dir` as a plain transformers directory (safetensors
    weights, tokenizer, chat template), all-or-nothing; returns `out_dir`."""
    from alignlab.models.save import save_pretrained_atomic

    model, tokenizer = load_gguf(path, dtype=dtype)
    return save_pretrained_atomic(model, tokenizer, out_dir)
