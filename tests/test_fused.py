"""The fused tanh-GELU: the same function and gradients as transformers' op-by-op modules, swapped
by every loader, invisible in what is saved."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config
from transformers.activations import FastGELUActivation, NewGELUActivation

from alignlab.models import load_causal_lm
from alignlab.models.build import new_causal_lm
from alignlab.models.fused import TanhGELU, fuse_activations
from alignlab.models.reward import load_reward_model
from alignlab.models.value import load_critic


def _formula(x: torch.Tensor) -> torch.Tensor:
    # the tanh approximation written out, independently of both implementations
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("unfused", [NewGELUActivation, FastGELUActivation])
def test_tanh_gelu_matches_the_formula_and_its_gradient(unfused):
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64, requires_grad=True)
    fused_out = TanhGELU()(x)
    (fused_grad,) = torch.autograd.grad(fused_out.sum(), x)
    expected = _formula(x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(fused_out, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(fused_grad, expected_grad, atol=1e-12, rtol=0)
    x32 = torch.randn(10_000) * 4
    assert (TanhGELU()(x32) - unfused()(x32)).abs().max() < 1e-6


def _gpt2(activation: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=97, n_embd=32, n_layer=3, n_head=2, n_positions=64,
                        activation_function=activation, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_fast"])
def test_fusing_a_model_keeps_its_outputs_gradients_and_state(activation):
    plain, fused = _gpt2(activation), _gpt2(activation)
    keys = list(fused.state_dict())
    assert fuse_activations(fused) == 3
    assert all(isinstance(block.mlp.act, TanhGELU) for block in fused.transformer.h)
    assert list(fused.state_dict()) == keys and fused.config.activation_function == activation
    ids = torch.randint(0, 97, (4, 20))
    losses = [m(input_ids=ids, labels=ids).loss for m in (plain, fused)]
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=0)
    for loss in losses:
        loss.backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-4, msg=name)
    assert fuse_activations(fused) == 0  # nothing left to swap


def test_other_activations_and_the_switch_are_left_alone(monkeypatch):
    assert fuse_activations(_gpt2("gelu")) == 0  # already one kernel
    assert fuse_activations(_gpt2("quick_gelu")) == 0  # another function
    monkeypatch.setenv("ALIGNLAB_FUSED_ACTIVATIONS", "0")
    model = _gpt2("gelu_new")
    assert fuse_activations(model) == 0
    assert isinstance(model.transformer.h[0].mlp.act, NewGELUActivation)


def test_every_loader_fuses_and_the_saved_model_is_unchanged(tiny_tokenizer, tmp_path):
    model = new_causal_lm(tiny_tokenizer, arch="gpt2", hidden_size=32, num_layers=2, num_heads=2)
    assert isinstance(model.transformer.h[0].mlp.act, TanhGELU)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)  # plain transformers: its own activation
    assert isinstance(plain.transformer.h[0].mlp.act, NewGELUActivation)
    for loaded in (load_causal_lm(tmp_path), load_reward_model(tmp_path, tiny_tokenizer),
                   load_critic(tmp_path, pad_token_id=tiny_tokenizer.pad_token_id)):
        assert all(isinstance(block.mlp.act, TanhGELU) for block in loaded.transformer.h)
    ids = torch.tensor([tiny_tokenizer("the film was a delight")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(load_causal_lm(tmp_path)(ids).logits, plain(ids).logits, atol=1e-5, rtol=0)
