"""Rows that share a prompt: the prompt-once log-prob pass against one pass over the whole rows."""

from __future__ import annotations

import pytest
import torch

import alignlab.ops.logps as logps_module
from alignlab.models.build import new_causal_lm
from alignlab.ops.logps import token_logps
from alignlab.ops.shared_prefix import plan_shared_prefix


def _grouped_batch(tokenizer, k: int = 3):
    """Right-padded rows: three prompts of different lengths, k completions each of different
    lengths, rows interleaved so that a prompt's rows are not adjacent; one row has an unscored
    token inside its completion (as a multi-turn mask would)."""
    prompts = [tokenizer(t)["input_ids"] for t in ("the film was a delight from start", "a dull", "hello world this")]
    completions = [tokenizer(t)["input_ids"] for t in (
        "and the cast shines", "not the worst film of the year", "i loved it", "four.",
        "the acting was superb but the pacing dragged", "what is two plus two", "close to it",
        "a plot that goes nowhere at all", "tiny",
    )]
    rows, starts = [], []
    for j in range(k):
        for i, prompt in enumerate(prompts):
            rows.append(prompt + completions[(i * k + j) % len(completions)])
            starts.append(len(prompt))
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    loss_mask = torch.zeros_like(input_ids)
    for r, (row, start) in enumerate(zip(rows, starts)):
        loss_mask[r, start : len(row)] = 1
    loss_mask[4, starts[4] + 2] = 0
    return input_ids, attention_mask, loss_mask


def _logps_and_grads(model, batch, share: bool, monkeypatch, temperature=0.9):
    calls = []
    real_forward = model.forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("logits_to_keep"))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    if not share:
        monkeypatch.setattr(logps_module, "_can_share_prefixes", lambda m: False)
    model.zero_grad(set_to_none=True)
    logps, mask = token_logps(model, *batch, temperature=temperature)
    weights = torch.arange(1, logps.shape[1] + 1, dtype=logps.dtype)  # position-dependent, so misplaced values show
    (logps * weights).sum().backward()
    monkeypatch.undo()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), mask, grads, calls


def _assert_close_to_scale(got, want, name, tol=1e-6):
    """max |got - want| within `tol` of want's largest entry: a misplaced or missing term moves a
    gradient by O(1) of its scale, rounding by far less."""
    scale = float(want.abs().max())
    assert scale > 0 and float((got - want).abs().max()) <= tol * scale, name


@pytest.mark.parametrize("arch, attention", [("gpt2", "sdpa"), ("llama", "sdpa"), ("llama", "eager")])
def test_prompt_once_equals_one_pass_in_values_and_gradients(arch, attention, tiny_tokenizer, monkeypatch):
    model = new_causal_lm(tiny_tokenizer, arch=arch, hidden_size=32, num_layers=2, num_heads=2).double()
    model.set_attn_implementation(attention)  # eager turned fully masked (left-padded) prompt rows into NaN
    batch = _grouped_batch(tiny_tokenizer)
    one, one_mask, one_grads, one_calls = _logps_and_grads(model, batch, share=False, monkeypatch=monkeypatch)
    two, two_mask, two_grads, two_calls = _logps_and_grads(model, batch, share=True, monkeypatch=monkeypatch)
    assert len(one_calls) == 1 and two_calls[0] == 1 and len(two_calls) == 2  # the route really changed
    assert torch.equal(one_mask, two_mask) and torch.equal(two_mask, batch[2][:, 1:])
    # float64, but Llama's masked attention rounds at ~1e-8 (a row alone differs from the batch by as much)
    torch.testing.assert_close(two, one, rtol=0, atol=1e-7)
    assert (two[two_mask == 0] == 0).all() and (two[two_mask == 1] < 0).all()
    assert one_grads.keys() == two_grads.keys() and len(one_grads) > 0
    for name in one_grads:
        _assert_close_to_scale(two_grads[name], one_grads[name], name)


def test_prompt_once_under_lora_and_for_the_adapter_disabled_reference(tiny_tokenizer, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from alignlab.models.reference import AdapterDisabled

    base = new_causal_lm(tiny_tokenizer, arch="llama", hidden_size=32, num_layers=2, num_heads=2).double()
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = _grouped_batch(tiny_tokenizer)
    one, _, one_grads, _ = _logps_and_grads(model, batch, share=False, monkeypatch=monkeypatch)
    two, _, two_grads, calls = _logps_and_grads(model, batch, share=True, monkeypatch=monkeypatch)
    assert len(calls) == 2
    torch.testing.assert_close(two, one, rtol=0, atol=1e-10)
    for name in one_grads:  # the adapters' gradients, all that trains
        _assert_close_to_scale(two_grads[name], one_grads[name], name)
    reference = AdapterDisabled(model)
    with torch.no_grad():
        ref, _ = reference.token_logps(*batch)
        with model.disable_adapter():
            base_alone, _ = token_logps(model.get_base_model(), *batch)
    torch.testing.assert_close(ref, base_alone, rtol=0, atol=1e-7)
    assert not torch.allclose(ref, two)  # the adapters do change the policy


def test_plan_groups_rows_by_prompt_and_refuses_batches_it_cannot_help(tiny_tokenizer):
    input_ids, attention_mask, loss_mask = _grouped_batch(tiny_tokenizer)
    plan = plan_shared_prefix(input_ids, attention_mask, loss_mask)
    assert plan is not None and plan.prefix_ids.shape[0] == 3
    assert plan.owner.tolist() == [0, 1, 2] * 3
    # each distinct prompt but its last token sits right-padded in prefix_ids; each row's tail
    # (that last token and the completion) right-padded in tail_ids
    for r in range(len(input_ids)):
        start, length = int(plan.starts[r]), int(attention_mask[r].sum())
        assert loss_mask[r, start] == 0 and loss_mask[r, start + 1] == 1
        prompt = plan.prefix_ids[plan.owner[r]][plan.prefix_mask[plan.owner[r]] == 1]
        assert torch.equal(prompt, input_ids[r, :start])
        n = int(plan.tail_mask[r].sum())
        assert n == length - start and torch.equal(plan.tail_ids[r, :n], input_ids[r, start:length])

    distinct = torch.arange(len(input_ids))[:, None] + 10  # every row another first token: nothing shared
    assert plan_shared_prefix(input_ids + distinct * (attention_mask == 1), attention_mask, loss_mask) is None
    assert plan_shared_prefix(input_ids.flip(1), attention_mask.flip(1), loss_mask.flip(1)) is None  # left padding
    unscored = loss_mask.clone()
    unscored[2] = 0
    assert plan_shared_prefix(input_ids, attention_mask, unscored) is None
    # a short shared prompt before long completions saves under MIN_SAVING of the positions
    long_tail = torch.ones(4, 40, dtype=torch.long)
    tail_mask = torch.zeros_like(long_tail)
    tail_mask[:, 2:] = 1
    assert plan_shared_prefix(long_tail, torch.ones_like(long_tail), tail_mask) is None
    assert plan_shared_prefix(long_tail, torch.ones_like(long_tail), tail_mask, min_saving=0.01) is not None


def test_checkpointing_other_kernels_sliding_windows_and_prompt_learning_take_one_pass(tiny_tokenizer):
    from peft import PromptTuningConfig, get_peft_model

    model = new_causal_lm(tiny_tokenizer, arch="llama", hidden_size=32, num_layers=2, num_heads=2)
    assert logps_module._can_share_prefixes(model)
    model.gradient_checkpointing_enable()
    assert not logps_module._can_share_prefixes(model)
    model.gradient_checkpointing_disable()
    model.config._attn_implementation = "flash_attention_2"  # the name is all that is read
    assert not logps_module._can_share_prefixes(model)
    model.config._attn_implementation = "sdpa"
    model.config.layer_types = ["full_attention", "sliding_attention"]
    assert not logps_module._can_share_prefixes(model)
    model.config.layer_types = ["full_attention", "full_attention"]
    prompted = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert not logps_module._can_share_prefixes(prompted)
