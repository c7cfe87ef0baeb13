"""Save a model (and tokenizer) in Hugging Face format, all-or-nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from alignlab.models.lora import merged_for_saving


def _sync_special_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase | None) -> None:
    """Fill pad/eos ids the tokenizer knows but the config or generation config lacks.

    The pad id is needed by reward models to find the last real token and by `generate` for
    batched prompts. The tokenizer's EOS is added to the generation config's stop ids (chat
    models often stop on an end-of-turn token that the base config does not list) without
    removing any the checkpoint already had.
    """
    if tokenizer is None:
        return
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_id
    generation = getattr(model, "generation_config", None)
    if generation is None:  # e.g. sequence classifiers do not generate
        return
    if generation.pad_token_id is None and pad_id is not None:
        generation.pad_token_id = pad_id
    if eos_id is not None:
        current = generation.eos_token_id
        stops = [] if current is None else ([current] if isinstance(current, int) else list(current))
        if eos_id not in stops:
            stops.append(eos_id)
        generation.eos_token_id = stops[0] if len(stops) == 1 else stops


def save_pretrained_atomic(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path,
    state_dict: dict | None = None,
) -> Path:
    """Save `model` and `tokenizer` to `out_dir` so that a kill never leaves a half-written model.

    Everything is written to a temporary sibling directory, which then takes `out_dir`'s place;
    an older `out_dir` is moved aside first and deleted only after the new one is in place. A kill
    between those two renames leaves no `out_dir` (and the old one under a hidden `.<name>.old-*`
    name), never a mixture. LoRA models are merged first (on a copy; the given model stays
    trainable), so the result loads with plain transformers and no peft. Weights are safetensors.
    Missing pad/eos ids are filled in from the tokenizer (on the model being saved). `state_dict`
    replaces the model's own weights (a sharded model's, gathered).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    to_save = merged_for_saving(model)
    _sync_special_token_ids(to_save, tokenizer)

    temp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        to_save.save_pretrained(temp_dir, **({"state_dict": state_dict} if state_dict is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(temp_dir)
        os.chmod(temp_dir, 0o755)  # mkdtemp makes it private; a model directory is an ordinary one
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    old_dir = None
    if out_dir.exists():
        old_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        os.replace(out_dir, old_dir / "model")
    try:
        os.replace(temp_dir, out_dir)
    except BaseException:
        if old_dir is not None:  # put the previous model back
            os.replace(old_dir / "model", out_dir)
            shutil.rmtree(old_dir, ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    if old_dir is not None:
        shutil.rmtree(old_dir, ignore_errors=True)
    return out_dir
