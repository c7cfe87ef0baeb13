"""Load tokenizers and causal LMs by hub id or local directory, safely and predictably.

Safe by default: weights come from safetensors files when the checkpoint has them (transformers
falls back to `.bin` files only through `torch.load(weights_only=True)`), and a checkpoint's own
Python code never runs unless the caller asks with `trust_remote_code=True`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignlab.models.fused import fuse_activations

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",  # whatever the checkpoint's config says (`torch_dtype` / `dtype`)
}

# Any of these marks a directory a tokenizer can load from (AutoTokenizer falls back to config.json
# to learn the model type).
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json")

# A hub id is "name" or "owner/name": letters, digits, "-", "_", "." and at most one slash.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a device name into a `torch.device`; None and "auto" pick CUDA when present, else CPU.

    Asking for CUDA on a machine without it fails here, with a clear message, rather than deep
    inside the first forward pass.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available on this machine")
    return resolved


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """Map a dtype name (float32, bfloat16, float16, auto) to what `from_pretrained(dtype=...)` takes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}") from None


def checkpoint_source(name_or_path: str | Path, marker_files: tuple[str, ...] = ("config.json",)) -> str:
    """Validate where a checkpoint comes from and return it as `from_pretrained` wants it.

    An existing directory must hold one of `marker_files` (a model's config.json by default).
    Anything else must look like a hub id ("gpt2", "Qwen/Qwen2.5-0.5B"); a path such as
    "runs/x/sft/model" that does not exist is reported as a missing directory instead of being
    sent to the hub as a nonsense id.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not any((path / name).is_file() for name in marker_files):
            raise FileNotFoundError(
                f"directory {text!r} has no {' or '.join(marker_files)}; is it a saved model?"
            )
        return str(path)
    if path.suffix.lower() == ".gguf" and path.is_file():
        from alignlab.models.gguf import CONVERT_HINT

        raise ValueError(f"{text!r} is a GGUF file; alignlab trains models in Hugging Face format: "
                         + CONVERT_HINT.format(path=text))
    if path.exists():
        raise NotADirectoryError(f"model path {text!r} is a file; pass the directory that holds it")
    if isinstance(name_or_path, Path) or not _HUB_ID.match(text) or text.count("/") > 1:
        raise FileNotFoundError(f"model directory {text!r} does not exist (and it is not a hub id)")
    return text


def _has_safetensors(source: str) -> bool:
    path = Path(source)
    return path.is_dir() and any(path.glob("*.safetensors"))


def weight_loading_kwargs(source: str, trust_remote_code: bool) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained` shared by every model loader here.

    A local directory with safetensors files is loaded strictly from them; otherwise transformers
    picks safetensors when the checkpoint has them and falls back to `torch.load(weights_only=True)`.
    """
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if _has_safetensors(source):
        kwargs["use_safetensors"] = True
    return kwargs


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer by hub id or local directory, ready for training batches.

    A tokenizer without a pad token gets its EOS token as pad, with a warning. That is fine for
    causal-LM training, where padded positions are masked out, but a distinct pad token is better
    for reward models: transformers reads a sequence classifier's score at the last token that is
    not the pad token, so with pad == EOS a response that ends in EOS is scored one token early.

    `padding_side` is set to "right" (what training collation expects); generation code switches
    to left padding itself.
    """
    source = checkpoint_source(name_or_path, TOKENIZER_FILES)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        if _lacks_tokenizer_files(source):
            raise ValueError(
                f"{name_or_path}: the directory has no tokenizer files (tokenizer.json, tokenizer_config.json, ...); "
                "save the model's tokenizer into it (tokenizer.save_pretrained)"
            ) from err
        # transformers' messages run over several lines; the CLI prints one
        message = f"could not load a tokenizer from {str(name_or_path)!r}: {' '.join(str(err).split())}"
        raise (OSError if isinstance(err, OSError) else ValueError)(message) from err
    check_tokenizer(tokenizer, str(name_or_path))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"tokenizer {str(name_or_path)!r} has neither a pad nor an EOS token; add a pad token first"
            )
        log.warning(
            "tokenizer %s has no pad token; using its EOS token %r as pad (a distinct pad token is "
            "better for reward models)", name_or_path, tokenizer.eos_token,
        )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


# Smaller than any real tokenizer (byte-level ones start from 256 pieces, sentencepiece ones carry
# 256 byte-fallback pieces, even a character-level one for English text needs ~95), and larger than
# what transformers builds from a directory with a config but no tokenizer files (1-3 special tokens).
MIN_VOCAB = 32
PROBE = "The film was good, 42 times!"
TOKENIZER_FIX = ("its files (tokenizer.json, tokenizer_config.json, ...) are missing or broken; save the model's "
                 "tokenizer into the directory (tokenizer.save_pretrained)")


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, source: str) -> None:
    """Refuse a tokenizer that cannot carry text: a tiny vocabulary, or one that does not give a probe
    string back. Whitespace and case are not compared: sentencepiece tokenizers add or drop a leading
    space, some decoders tidy the space before punctuation, some tokenizers lowercase. Training on a
    broken one would run to the end on two tokens an example and exit as if all went well."""
    size = len(tokenizer)
    if size < MIN_VOCAB:
        raise ValueError(
            f"{source}: the tokenizer has only {size} token{'s' if size != 1 else ''}; {TOKENIZER_FIX}"
        )
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    back = tokenizer.decode(ids, skip_special_tokens=True)
    if "".join(back.split()).casefold() != "".join(PROBE.split()).casefold():
        raise ValueError(
            f"{source}: the tokenizer does not give text back ({PROBE!r} encoded and decoded is {back!r}); "
            f"{TOKENIZER_FIX}"
        )


def _lacks_tokenizer_files(source: str) -> bool:
    """A local directory with none of the files a tokenizer is saved as (a config alone is not one)."""
    path = Path(source)
    patterns = ("tokenizer*", "vocab*", "merges.txt", "*.model", "*.tiktoken", "spiece*")
    return path.is_dir() and not any(any(path.glob(pattern)) for pattern in patterns)


POSITION_KEYS = ("n_positions", "max_position_embeddings")


def position_limit(name_or_path: str | Path, trust_remote_code: bool = False) -> tuple[int, str] | None:
    """The most positions the model was built for, with the config key that says so, or None."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint_source(name_or_path), trust_remote_code=trust_remote_code)
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value, key
    return None


def check_length_limit(name_or_path: str | Path, length: int, what: str, fix: str | None = None) -> None:
    """Refuse, before any work, a length past the model's positions: a row longer than GPT-2's
    `n_positions` crashes deep in the forward with an IndexError; a rotary model was not trained there."""
    limit = position_limit(name_or_path)
    if limit is not None and length > limit[0]:
        raise ValueError(
            f"{what} {length} exceeds the {limit[0]} positions of model {str(name_or_path)!r} "
            f"({limit[1]} in its config.json); {fix or f'set {what} to {limit[0]} or less'}"
        )


DEFAULT_MAX_LENGTH = 512


def resolve_max_length(name_or_path: str | Path, max_length: int | None) -> int:
    """`max_length` as set, checked against the model's positions; unset (None), 512 or the model's
    limit if that is smaller (the quickstart's GPT-2 holds 256)."""
    if max_length is None:
        limit = position_limit(name_or_path)
        return min(DEFAULT_MAX_LENGTH, limit[0]) if limit else DEFAULT_MAX_LENGTH
    check_length_limit(name_or_path, max_length, "max_length")
    return max_length


def load_causal_lm(
    name_or_path: str | Path,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM by hub id or local directory.

    `dtype` is one of float32, bfloat16, float16 or auto (the checkpoint's own). `device=None`
    leaves the model where transformers puts it (the CPU); "auto" picks CUDA when present. The
    model's config is left untouched (dropout included): call `disable_dropout` where wanted.
    Op-by-op tanh-GELU activations run as one fused kernel (`alignlab.models.fused`).
    """
    source = checkpoint_source(name_or_path)
    kwargs = weight_loading_kwargs(source, trust_remote_code)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype), **kwargs)
    except OSError as err:
        raise OSError(f"could not load a causal LM from {str(name_or_path)!r}: {err}") from err
    fuse_activations(model)
    if device is not None:
        model.to(resolve_device(device))
    return model


def disable_dropout(model: nn.Module) -> int:
    """Switch off every dropout in `model` (RLHF practice: dropout makes log-probs of the same
    tokens differ between the policy and the reference and between rollout and update).

    Sets `p = 0` on each `nn.Dropout` and zeroes float `attention_dropout` attributes, which
    architectures such as Llama and Qwen2 pass to their attention kernel instead of using a
    dropout module. The config is left alone. Returns how many settings were changed.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p != 0:
            module.p = 0.0
            changed += 1
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate != 0.0:
            module.attention_dropout = 0.0
            changed += 1
    return changed
