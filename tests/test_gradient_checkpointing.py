"""Gradient checkpointing: the same update as without it, with every layer really run twice."""

from __future__ import annotations

import pytest
import torch

from alignlab.data import SFTExample, tokenize_sft
from alignlab.data.readers import Source
from alignlab.models import LoraSettings, apply_lora, load_causal_lm
from alignlab.stages.offline.sft import sft_step_fns
from alignlab.train import TrainSettings, train
from alignlab.train.activations import use_gradient_checkpointing

TEXTS = ["the film was a delight", "a dull and tedious movie", "i loved the soundtrack", "not the worst film"]


def _train(tiny_model_dir, tiny_tokenizer, tmp_path, checkpointing: bool, lora: bool = False):
    examples = [SFTExample(t.split()[0], " " + " ".join(t.split()[1:]), Source("f", i)) for i, t in enumerate(TEXTS * 3)]
    rows, _ = tokenize_sft(examples, tiny_tokenizer, 64, 16)
    model = load_causal_lm(tiny_model_dir, device="cpu")
    if lora:
        model = apply_lora(model, LoraSettings(r=4, alpha=8))
    calls = {"n": 0}
    # count calls of a module inside the layer: a checkpointed layer reruns its forward in backward
    # (module hooks do not fire during that replay, so the forward itself is wrapped)
    mlp = model.get_submodule("transformer.h.0.mlp") if not lora else model.base_model.model.transformer.h[0].mlp
    mlp_forward = mlp.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return mlp_forward(*args, **kwargs)

    mlp.forward = counted
    settings = TrainSettings(batch_size=4, lr=1e-3, max_steps=3, save_every=None, gradient_checkpointing=checkpointing)
    train(model, [len(r) for r in rows], sft_step_fns(rows, tiny_tokenizer.pad_token_id), settings, tmp_path,
          device=torch.device("cpu"))
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad]), calls["n"], model


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_checkpointing_changes_memory_not_the_update(tiny_model_dir, tiny_tokenizer, tmp_path, lora):
    plain, plain_calls, _ = _train(tiny_model_dir, tiny_tokenizer, tmp_path / "plain", False, lora)
    ckpt, ckpt_calls, model = _train(tiny_model_dir, tiny_tokenizer, tmp_path / "ckpt", True, lora)
    assert plain_calls == 3 and ckpt_calls == 6  # the backward pass recomputed each block's forward
    assert torch.allclose(plain, ckpt, atol=1e-6)


def test_a_model_without_the_switch_is_refused():
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        use_gradient_checkpointing(torch.nn.Linear(2, 2), True)
    use_gradient_checkpointing(torch.nn.Linear(2, 2), False)  # off: nothing asked of the model
