"""ops: selective log-softmax, token log-probs on a tiny model, masked statistics, KL estimators."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab.ops import logps as logps_module
from alignlab.ops import selective as selective_module
from alignlab.ops import (
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    pairwise_accuracy,
    selective_log_softmax,
    sequence_logps,
    token_logps,
)

SHAPES = [(7,), (4, 11), (2, 3, 13), (2, 1, 3, 5)]


def _reference(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


# --- selective_log_softmax ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_selective_log_softmax_matches_log_softmax_gather(shape, dtype, tol):
    gen = torch.Generator().manual_seed(sum(shape))
    logits = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)
    index = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    got = selective_log_softmax(logits, index)
    assert got.dtype == dtype and got.shape == shape[:-1]
    torch.testing.assert_close(got, _reference(logits, index), rtol=0, atol=tol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_selective_log_softmax_half_precision_is_computed_in_float32(shape, dtype):
    gen = torch.Generator().manual_seed(len(shape))
    logits = (torch.randn(shape, generator=gen) * 4).to(dtype)
    index = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    got = selective_log_softmax(logits, index)
    assert got.dtype == torch.float32
    # Exact up to float32 rounding against the same (rounded) logits in float64 ...
    exact = _reference(logits.double(), index).float()
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-5)
    # ... and within half-precision error of the original values.
    loose = _reference(logits.float(), index)
    torch.testing.assert_close(got, loose, rtol=0, atol=5e-2)


def test_selective_log_softmax_chunking_and_strided_views(monkeypatch):
    """Many small chunks and a non-flattenable view (logits[:, :-1]) give the same answer."""
    monkeypatch.setattr(selective_module, "CHUNK_ELEMENTS", 30)  # 3 rows of V=10 per chunk
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(3, 8, 10, generator=gen, dtype=torch.float64)
    view = full[:, :-1]
    assert not view.is_contiguous()
    index = torch.randint(0, 10, (3, 7), generator=gen)
    torch.testing.assert_close(selective_log_softmax(view, index), _reference(view, index))
    torch.testing.assert_close(
        selective_log_softmax(view.bfloat16(), index), _reference(view.bfloat16().double(), index).float()
    )


def test_selective_log_softmax_gradient_and_validation():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 5, (2, 3), generator=gen)
    assert torch.autograd.gradcheck(lambda z: selective_log_softmax(z, index), (logits,))
    with pytest.raises(ValueError, match="index shape"):
        selective_log_softmax(logits, index[:, :2])
    with pytest.raises(TypeError):
        selective_log_softmax(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))


# --- token_logps on a tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    return model.eval()


def _manual_token_logps(model, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """Independent path: feed each prefix alone and read log p(next token) at its last position."""
    out = []
    with torch.no_grad():
        for t in range(1, len(ids)):
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1] / temperature
            out.append(torch.log_softmax(logits, dim=-1)[ids[t]])
    return torch.stack(out)


def test_token_logps_equals_prefix_by_prefix_loop(tiny_model, tiny_tokenizer):
    ids = tiny_tokenizer("the film was a delight from start")["input_ids"]
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        got, mask = token_logps(tiny_model, input_ids, torch.ones_like(input_ids))
        hot, _ = token_logps(tiny_model, input_ids, torch.ones_like(input_ids), temperature=0.7)
    assert got.shape == (1, len(ids) - 1) and mask.shape == (1, len(ids) - 1)
    torch.testing.assert_close(got[0], _manual_token_logps(tiny_model, ids), rtol=0, atol=1e-10)
    torch.testing.assert_close(hot[0], _manual_token_logps(tiny_model, ids, 0.7), rtol=0, atol=1e-10)
    assert (got < 0).all()


def test_token_logps_right_padding_leaves_real_tokens_unchanged(tiny_model, tiny_tokenizer):
    texts = ["the film was a delight", "a dull and tedious movie with a plot that goes nowhere", "hi"]
    rows = [tiny_tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    pad = tiny_tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        batch, mask = token_logps(tiny_model, input_ids, attention_mask)
        for i, r in enumerate(rows):
            alone, _ = token_logps(tiny_model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))
            n = len(r) - 1
            torch.testing.assert_close(batch[i, :n], alone[0], rtol=0, atol=1e-10)
            assert (batch[i, n:] == 0).all() and (mask[i, n:] == 0).all() and (mask[i, :n] == 1).all()


def test_token_logps_mask_alignment_with_a_loss_mask(tiny_model, tiny_tokenizer):
    ids = tiny_tokenizer("user: what is two plus two? assistant: four.")["input_ids"]
    input_ids = torch.tensor([ids, ids])
    attention_mask = torch.ones_like(input_ids)
    prompt_len = 6
    loss_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    loss_mask[:, prompt_len:] = True  # the response: tokens prompt_len .. end
    with torch.no_grad():
        unmasked, _ = token_logps(tiny_model, input_ids, attention_mask)
        masked, mask = token_logps(tiny_model, input_ids, attention_mask, loss_mask=loss_mask)
    # mask[:, t] speaks for token t+1: the first response token is predicted at t = prompt_len-1.
    assert torch.equal(mask, loss_mask[:, 1:])
    assert not mask[:, : prompt_len - 1].any() and mask[:, prompt_len - 1 :].all()
    assert (masked[:, : prompt_len - 1] == 0).all()
    # (the two rows share their prompt, so the masked call runs it once: the same to rounding)
    torch.testing.assert_close(masked[:, prompt_len - 1 :], unmasked[:, prompt_len - 1 :], rtol=0, atol=1e-12)
    # The sum of the response's log-probs is log p(response | prompt) via the chain rule.
    manual = _manual_token_logps(tiny_model, ids)[prompt_len - 1 :].sum()
    torch.testing.assert_close(sequence_logps(masked, mask)[0], manual, rtol=0, atol=1e-10)


def test_token_logps_projects_only_from_the_first_scored_position(tiny_model, tiny_tokenizer, monkeypatch):
    # right-padded rows whose responses start at 4 and 7: the LM head skips the 3 positions that
    # predict no scored token in any row; values and gradients equal the full projection's
    rows = [tiny_tokenizer(t)["input_ids"] for t in ("the film was a delight to", "a dull and tedious movie with a plot")]
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    loss_mask = torch.zeros_like(input_ids)
    loss_mask[0, 4 : len(rows[0])] = 1
    loss_mask[1, 7 : len(rows[1])] = 1
    kept = []
    real_forward = tiny_model.forward

    def spy(*args, **kwargs):
        kept.append(kwargs.get("logits_to_keep"))
        return real_forward(*args, **kwargs)

    def run(project_all):
        monkeypatch.setattr(logps_module, "_takes_logits_to_keep", lambda model: not project_all)
        monkeypatch.setattr(tiny_model, "forward", spy)
        tiny_model.zero_grad(set_to_none=True)
        logps, mask = token_logps(tiny_model, input_ids, attention_mask, loss_mask, temperature=0.8)
        (logps * torch.arange(1, width, dtype=logps.dtype)).sum().backward()  # position-dependent weights
        return logps.detach(), mask, [p.grad.clone() for p in tiny_model.parameters()]

    full, full_mask, full_grads = run(project_all=True)
    part, part_mask, part_grads = run(project_all=False)
    assert kept == [None, width - 3]
    assert part.shape == full.shape == (2, width - 1) and torch.equal(part_mask, full_mask)
    torch.testing.assert_close(part, full, rtol=0, atol=1e-6)
    assert (part[:, :3] == 0).all() and (part[loss_mask[:, 1:] == 1] < 0).all()
    for a, b in zip(part_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_transformers_and_peft_models_take_logits_to_keep_and_a_bare_one_does_not(tiny_model):
    from peft import LoraConfig, get_peft_model

    from alignlab.ops.logps import _takes_logits_to_keep

    class Bare(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return input_ids

    assert _takes_logits_to_keep(tiny_model)
    lora = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=2, target_modules=["c_attn"]))
    assert _takes_logits_to_keep(lora)
    assert not _takes_logits_to_keep(Bare())


def test_token_logps_gradients_flow_and_bad_temperature(tiny_model, tiny_tokenizer):
    ids = torch.tensor([tiny_tokenizer("the cast shines")["input_ids"]])
    logps, mask = token_logps(tiny_model, ids, torch.ones_like(ids))
    logps.sum().backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    tiny_model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="temperature"):
        token_logps(tiny_model, ids, torch.ones_like(ids), temperature=0.0)


# --- sequence_logps -----------------------------------------------------------------------------


def test_sequence_logps_sum_and_mean_on_hand_made_values():
    logps = torch.tensor([[-1.0, -2.0, -3.0, float("nan")], [-0.5, -0.25, 0.0, 0.0], [-4.0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(sequence_logps(logps, mask, "sum"), torch.tensor([-6.0, -0.75, 0.0]))
    torch.testing.assert_close(sequence_logps(logps, mask, "mean"), torch.tensor([-2.0, -0.375, 0.0]))
    with pytest.raises(ValueError, match="reduction"):
        sequence_logps(logps, mask, "max")


# --- masked statistics --------------------------------------------------------------------------

X = [[1.0, 2.0, 3.0, 100.0], [4.0, -5.0, 9.0, -100.0]]
M = [[1, 1, 1, 0], [1, 1, 0, 0]]


def test_masked_sum_and_mean_against_numpy():
    x, m = torch.tensor(X, dtype=torch.float64), torch.tensor(M)
    nx = np.ma.masked_array(np.array(X), mask=np.array(M) == 0)
    assert masked_sum(x, m).item() == pytest.approx(float(nx.sum()))
    assert masked_mean(x, m).item() == pytest.approx(float(nx.mean()))
    np.testing.assert_allclose(masked_sum(x, m, dim=1).numpy(), nx.sum(axis=1).filled())
    np.testing.assert_allclose(masked_mean(x, m, dim=1).numpy(), nx.mean(axis=1).filled())
    np.testing.assert_allclose(masked_mean(x, m, dim=0).numpy(), [2.5, -1.5, 3.0, 0.0])  # empty -> 0
    # bool and float masks behave alike; NaN under the mask does not leak.
    x_nan = x.clone()
    x_nan[0, 3] = float("nan")
    assert masked_sum(x_nan, m.bool()).item() == pytest.approx(5.0)
    assert masked_mean(x_nan, m.double()).item() == pytest.approx(5.0 / 5)


def test_masked_var_against_numpy():
    x, m = torch.tensor(X, dtype=torch.float64), torch.tensor(M)
    kept = np.array([1.0, 2.0, 3.0, 4.0, -5.0])
    assert masked_var(x, m).item() == pytest.approx(float(np.var(kept, ddof=1)))
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(float(np.var(kept, ddof=0)))
    one = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0]])
    assert masked_var(x, one).item() == 0.0  # undefined -> 0, never NaN


def test_masked_whiten_gives_zero_mean_unit_variance_on_kept_entries():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 9, generator=gen, dtype=torch.float64) * 3 + 7
    m = torch.rand(5, 9, generator=gen) > 0.3
    w = masked_whiten(x, m)
    assert masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(w, m).item() == pytest.approx(1.0, abs=1e-6)
    assert (w[~m] == 0).all()
    kept = x[m].numpy()
    np.testing.assert_allclose(w[m].numpy(), (kept - kept.mean()) / kept.std(ddof=1), atol=1e-7)
    # shift_mean=False rescales but keeps the mean.
    w2 = masked_whiten(x, m, shift_mean=False)
    np.testing.assert_allclose(w2[m].numpy(), (kept - kept.mean()) / kept.std(ddof=1) + kept.mean(), atol=1e-7)


def test_masked_whiten_over_processes_uses_the_statistics_of_all_their_entries():
    # two processes holding the same entries: `reduce` doubles every sum, so the result must be
    # one process whitening both copies at once (the unbiased variance then divides by 2n - 1)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 7, generator=gen, dtype=torch.float64) * 2 - 1
    m = torch.rand(3, 7, generator=gen) > 0.4
    for shift in (True, False):
        both = masked_whiten(torch.cat([x, x]), torch.cat([m, m]), shift_mean=shift)[:3]
        torch.testing.assert_close(masked_whiten(x, m, shift_mean=shift, reduce=lambda t: 2 * t), both)
    assert not torch.allclose(masked_whiten(x, m, shift_mean=False), both)  # n - 1 against 2n - 1: it matters


def test_pairwise_accuracy_hard_and_soft_labels():
    diff = torch.tensor([1.0, -1.0, 0.0, 2.0])
    assert pairwise_accuracy(diff).item() == pytest.approx(0.5)  # the tie counts as wrong
    labels = torch.tensor([0.9, 0.2, 0.5, 0.5])
    # right, right (p<0.5 and diff<0), tie 0.5, tie 0.5
    assert pairwise_accuracy(diff, labels).item() == pytest.approx(0.75)


# --- KL estimators -----------------------------------------------------------------------------


def test_kl_estimators_on_hand_made_values():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -0.5, -0.1], dtype=torch.float64)
    for i in range(4):
        d = ref[i].item() - logp[i].item()  # log(q/p)
        assert kl_k1(logp, ref)[i].item() == pytest.approx(-d, abs=1e-12)
        assert kl_k2(logp, ref)[i].item() == pytest.approx(0.5 * d * d, abs=1e-12)
        assert kl_k3(logp, ref)[i].item() == pytest.approx(math.exp(d) - d - 1, abs=1e-12)
    for kind, fn in (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)):
        assert torch.equal(kl_estimate(logp, ref, kind), fn(logp, ref))
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")
    assert kl_k3(logp, logp).abs().max().item() == 0.0
    # k3 is never negative, including for tiny differences where exp(d) - 1 would cancel.
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(10_000, generator=gen, dtype=torch.float64) * torch.logspace(-9, 1, 10_000, dtype=torch.float64)
    assert (kl_k3(torch.zeros_like(a), a) >= 0).all()
    assert (kl_k3(torch.zeros(10_000), a.float()) >= 0).all()


def test_k1_and_k3_expectations_match_analytic_kl():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    n = 200_000
    samples = torch.multinomial(p, n, replacement=True, generator=torch.Generator().manual_seed(0))
    logp, ref = p.log()[samples], q.log()[samples]
    for kind in ("k1", "k3"):
        est = kl_estimate(logp, ref, kind)
        # Exact standard error of the mean from the distribution itself, 5 sigma.
        per_x = kl_estimate(p.log(), q.log(), kind)
        std = math.sqrt(float((p * per_x**2).sum()) - kl**2)
        assert abs(est.mean().item() - kl) < 5 * std / math.sqrt(n), kind
    # k2 is biased: its expectation is ½E[(log p/q)²], not KL.
    per_x = kl_k2(p.log(), q.log())
    assert float((p * per_x).sum()) != pytest.approx(kl, rel=1e-3)
