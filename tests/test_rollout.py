"""The rollout engine: sampler log-probs equal the trainer's, EOS/length handling, determinism,
batch layout, padding independence, and the vLLM import guard."""

from __future__ import annotations

import copy
import importlib
import random
import sys

import pytest
import torch

from engine_gap import engine_gap, perturbed

from alignlab.models import load_causal_lm
from alignlab.models.build import new_causal_lm
from alignlab.ops import token_logps
from alignlab.rollout import (
    LocalSampler,
    Rollouts,
    Sampler,
    SamplingSettings,
    generate,
    logp_mismatch,
    sample,
    to_batch,
)


@pytest.fixture(scope="module")
def policy(tiny_tokenizer):
    return new_causal_lm(tiny_tokenizer, "gpt2", hidden_size=32, num_layers=2, num_heads=2, max_positions=64).eval()


@pytest.fixture(scope="module")
def eos_prone_policy(policy, tiny_tokenizer):
    """The policy with its final-norm bias pushed towards EOS (tied embeddings): p(EOS) ~ 0.1-0.2 a step."""
    model = copy.deepcopy(policy)
    eos_row = model.transformer.wte.weight[tiny_tokenizer.eos_token_id].detach()
    with torch.no_grad():
        model.transformer.ln_f.bias += 4.0 * eos_row / eos_row.pow(2).sum()
    return model


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    rng = random.Random(0)
    first_plain_id = 3  # 0-2 are <pad>, <s>, </s>
    return [[rng.randrange(first_plain_id, len(tiny_tokenizer)) for _ in range(rng.randint(1, 9))] for _ in range(10)]


def ids_of(tokenizer):
    return {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id}


@pytest.mark.parametrize(
    "settings",
    [
        SamplingSettings(max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9, batch_size=4),
        SamplingSettings(max_new_tokens=8, temperature=0.7, top_k=20, top_p=0.9, batch_size=4),
        SamplingSettings(max_new_tokens=8, temperature=0.7, batch_size=4),
        SamplingSettings(max_new_tokens=8, temperature=0.7, top_k=20, top_p=0.9, batch_size=4, draw="inverse_cdf"),
        SamplingSettings(max_new_tokens=8, temperature=0.7, batch_size=4, draw="inverse_cdf"),
        SamplingSettings(max_new_tokens=8, temperature=0.7, top_k=20, batch_size=4, cache="static"),
    ],
    ids=["T1-topk-topp", "T0.7-topk-topp", "T0.7-unfiltered", "inverse-cdf-T0.7-topk-topp", "inverse-cdf-T0.7",
         "static-cache-T0.7-topk"],
)
def test_sampler_logps_equal_trainer_logps_of_the_untruncated_tempered_distribution(
    policy, tiny_tokenizer, prompts, settings
):
    rollouts = sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=1)
    batch = to_batch(rollouts, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        trainer, mask = token_logps(
            policy, batch["input_ids"], batch["attention_mask"], batch["loss_mask"], settings.temperature
        )
    keep = mask.bool()
    assert keep.sum() == sum(len(c) for c in rollouts.completion_ids)
    assert (batch["sampler_logps"][keep] - trainer[keep]).abs().max() <= 1e-5
    assert torch.all(batch["sampler_logps"][~keep] == 0)
    figures = logp_mismatch(batch["sampler_logps"], trainer, mask)
    assert figures["mean_abs_diff"] <= 1e-5 and figures["max_abs_diff"] <= 1e-5
    assert figures["mean_ratio"] == pytest.approx(1.0, abs=1e-5)
    if settings.top_k:  # the filters cut most of the vocabulary, so truncated log-probs would be larger
        assert max(lp for row in rollouts.logps for lp in row) < 0


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.8)])
def test_inverse_cdf_draws_from_the_tempered_truncated_distribution(temperature, top_k, top_p):
    from alignlab.rollout.draw import draw

    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    probs = (logits / temperature).softmax(-1)
    keep = torch.ones(5, dtype=torch.bool)
    if top_k:
        keep = logits >= logits.topk(top_k).values[-1]
    if top_p < 1:  # probabilities 0.563, 0.207, 0.126, ...: 0.8 needs the three likeliest
        keep = torch.tensor([True, True, True, False, False])
    expected = torch.where(keep, probs, 0) / torch.where(keep, probs, 0).sum()
    n = 100_000
    with torch.random.fork_rng():
        torch.manual_seed(0)
        drawn = draw(logits.expand(n, -1), temperature, top_k, top_p).squeeze(1)
    freq = torch.bincount(drawn, minlength=5).double() / n
    sigma = (expected * (1 - expected) / n).sqrt().double()
    assert ((freq - expected.double()).abs() <= 5 * sigma + 1e-12).all(), (freq, expected)
    assert (freq[~keep] == 0).all()  # nothing outside top-k / the nucleus


def test_inverse_cdf_sampling_keeps_the_sampler_contract(policy, eos_prone_policy, tiny_tokenizer, prompts):
    settings = SamplingSettings(max_new_tokens=8, batch_size=4, draw="inverse_cdf")
    torch.manual_seed(5)
    expected_next = torch.rand(2)
    torch.manual_seed(5)
    first = sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=7)
    assert torch.equal(torch.rand(2), expected_next)
    assert first == sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=7)
    assert first.completion_ids != sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=8).completion_ids
    greedy = settings.model_copy(update={"top_k": 1})
    assert sample(policy, prompts, greedy, **ids_of(tiny_tokenizer)) == sample(
        policy, prompts, greedy.model_copy(update={"draw": "multinomial"}), **ids_of(tiny_tokenizer))
    ended = sample(eos_prone_policy, prompts * 3, settings, **ids_of(tiny_tokenizer), seed=0)
    assert any(ended.finished) and not all(ended.finished)
    eos = tiny_tokenizer.eos_token_id
    assert all(finished == (ids[-1] == eos) and eos not in ids[:-1] for ids, finished in zip(ended.completion_ids, ended.finished))


def test_top_k_zero_means_no_truncation(policy, tiny_tokenizer, prompts):
    # transformers falls back to a top-k of 50 when top_k is None; 0 must really mean "all tokens".
    settings = SamplingSettings(max_new_tokens=8, temperature=50.0, batch_size=16)
    rollouts = sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=0)
    batch = to_batch(rollouts, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    drawn = batch["input_ids"][:, 1:]
    ranks = (logits > logits.gather(-1, drawn[..., None])).sum(-1)  # 0: the most likely token
    assert (ranks[batch["loss_mask"][:, 1:].bool()] >= 50).any()


def test_eos_ends_a_row_and_sets_finished(eos_prone_policy, tiny_tokenizer, prompts):
    settings = SamplingSettings(max_new_tokens=12, batch_size=4)
    eos = tiny_tokenizer.eos_token_id
    rollouts = sample(eos_prone_policy, prompts * 3, settings, **ids_of(tiny_tokenizer), seed=0)
    assert any(rollouts.finished) and not all(rollouts.finished)
    for ids, logps, finished in zip(rollouts.completion_ids, rollouts.logps, rollouts.finished):
        assert 1 <= len(ids) <= settings.max_new_tokens and len(logps) == len(ids)
        assert eos not in ids[:-1]  # generate's padding after EOS is cut (pad itself is a token a model may draw)
        assert finished == (ids[-1] == eos)
        if not finished:
            assert len(ids) == settings.max_new_tokens
    assert to_batch(rollouts, tiny_tokenizer.pad_token_id)["finished"].tolist() == rollouts.finished


def test_stop_ids_end_a_row_like_eos_but_do_not_mark_it_finished(policy, tiny_tokenizer, prompts):
    settings = SamplingSettings(max_new_tokens=12, batch_size=4)
    free = sample(policy, prompts * 3, settings, **ids_of(tiny_tokenizer), seed=1)
    # stop at the two tokens the unconstrained samples draw most often
    counts = {}
    for ids in free.completion_ids:
        for token in ids:
            counts[token] = counts.get(token, 0) + 1
    stops = sorted(counts, key=counts.get)[-2:]
    cut = sample(policy, prompts * 3, settings, **ids_of(tiny_tokenizer), seed=1, stop_ids=stops)
    eos = tiny_tokenizer.eos_token_id
    assert any(ids[-1] in stops for ids in cut.completion_ids)
    for before, ids, logps, finished in zip(free.completion_ids, cut.completion_ids, cut.logps, cut.finished):
        # the same draws up to the first stop token, which is kept; nothing after it
        end = next((i + 1 for i, t in enumerate(before) if t in stops or t == eos), len(before))
        assert ids == before[:end] and len(logps) == len(ids)
        assert not any(t in stops for t in ids[:-1])
        assert finished == (ids[-1] == eos)


def test_max_new_tokens_is_respected(policy, tiny_tokenizer, prompts):
    for max_new in (1, 5):
        rollouts = sample(policy, prompts, SamplingSettings(max_new_tokens=max_new), **ids_of(tiny_tokenizer))
        assert all(1 <= len(c) <= max_new for c in rollouts.completion_ids)
        assert all(len(c) == max_new for c, f in zip(rollouts.completion_ids, rollouts.finished) if not f)


def test_same_seed_same_samples_and_the_callers_random_stream_is_untouched(policy, tiny_tokenizer, prompts):
    settings = SamplingSettings(max_new_tokens=6, batch_size=3)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # sampling neither shifted nor reseeded it
    again = sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=7)
    other = sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=8)
    assert first == again
    assert first.completion_ids != other.completion_ids


def test_policy_mode_is_restored(tiny_tokenizer, prompts, policy):
    model = copy.deepcopy(policy).train()
    sample(model, prompts[:2], SamplingSettings(max_new_tokens=2), **ids_of(tiny_tokenizer))
    assert model.training


def test_top_k_one_is_greedy_argmax(policy, tiny_tokenizer, prompts):
    settings = SamplingSettings(max_new_tokens=6, top_k=1, batch_size=4)
    rollouts = sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=3)
    batch = to_batch(rollouts, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    keep = batch["loss_mask"][:, 1:].bool()
    assert torch.equal(logits.argmax(-1)[keep], batch["input_ids"][:, 1:][keep])
    assert rollouts == sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=99)  # seed-free


def test_a_rows_greedy_completion_does_not_depend_on_its_batch(policy, tiny_tokenizer, prompts):
    settings = SamplingSettings(max_new_tokens=6, top_k=1, batch_size=len(prompts))
    together = sample(policy, prompts, settings, **ids_of(tiny_tokenizer))  # left-padded to 9 tokens
    for i, prompt in enumerate(prompts):
        alone = sample(policy, [prompt], settings, **ids_of(tiny_tokenizer))
        assert alone.completion_ids[0] == together.completion_ids[i]
        assert alone.logps[0] == pytest.approx(together.logps[i], abs=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_padding_with_position_ids_gives_single_row_logps(tiny_tokenizer, prompts, arch):
    model = new_causal_lm(tiny_tokenizer, arch, hidden_size=32, num_layers=2, num_heads=2, max_positions=64).eval()
    rollouts = sample(model, prompts, SamplingSettings(max_new_tokens=5), **ids_of(tiny_tokenizer), seed=2)
    rows = [p + c for p, c in zip(rollouts.prompt_ids, rollouts.completion_ids)]
    width = max(map(len, rows))
    ids = torch.tensor([[tiny_tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        padded, _ = token_logps(model, ids, mask, position_ids=positions)
        for row, (r, completion) in enumerate(zip(rows, rollouts.completion_ids)):
            alone, _ = token_logps(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))
            n = len(completion)
            assert torch.allclose(padded[row, -n:], alone[0, -n:], atol=1e-5)
            assert torch.allclose(padded[row, -n:], torch.tensor(rollouts.logps[row]), atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_static_cache_samples_what_the_dynamic_one_does(tiny_tokenizer, prompts, arch):
    # the static cache pads prompts to a multiple of 16 tokens (9 here): more left padding, same rows
    model = new_causal_lm(tiny_tokenizer, arch, hidden_size=32, num_layers=2, num_heads=2, max_positions=64).eval()
    for extra in ({"top_k": 1}, {"temperature": 0.8}):
        dynamic = sample(model, prompts, SamplingSettings(max_new_tokens=6, batch_size=4, **extra),
                         **ids_of(tiny_tokenizer), seed=4)
        static = sample(model, prompts, SamplingSettings(max_new_tokens=6, batch_size=4, cache="static", **extra),
                        **ids_of(tiny_tokenizer), seed=4)
        assert static.completion_ids == dynamic.completion_ids
        for a, b in zip(static.logps, dynamic.logps):
            assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("arch,attention", [("gpt2", "sdpa"), ("gpt2", "eager"), ("llama", "sdpa"), ("llama", "eager")])
def test_repeated_prompts_prefilled_once_sample_what_generate_alone_does(tiny_tokenizer, prompts, arch, attention,
                                                                        monkeypatch):
    import alignlab.rollout.local as local

    model = new_causal_lm(tiny_tokenizer, arch, hidden_size=32, num_layers=2, num_heads=2, max_positions=64).eval()
    model.config._attn_implementation = attention
    repeated = [p for p in prompts for _ in range(3)]  # 1- to 9-token prompts, 3 samples each
    settings = SamplingSettings(max_new_tokens=6, temperature=0.9, batch_size=12)
    caches = []
    real = local.prefill_distinct
    monkeypatch.setattr(local, "prefill_distinct", lambda *a, **k: caches.append(real(*a, **k)) or caches[-1])
    once = sample(model, repeated, settings, **ids_of(tiny_tokenizer), seed=5)
    assert len(caches) == 3 and all(c is not None for c in caches)  # every batch took the prefill route
    monkeypatch.setattr(local, "prefill_distinct", lambda *a, **k: None)
    alone = sample(model, repeated, settings, **ids_of(tiny_tokenizer), seed=5)
    assert once.completion_ids == alone.completion_ids
    for a, b in zip(once.logps, alone.logps):
        assert a == pytest.approx(b, abs=1e-5)


def test_a_lora_policy_takes_the_prefill_route_too(tiny_tokenizer, prompts, monkeypatch):
    import alignlab.rollout.local as local
    from alignlab.models import LoraSettings, apply_lora

    model = apply_lora(new_causal_lm(tiny_tokenizer, "gpt2", hidden_size=32, num_layers=2, num_heads=2,
                                     max_positions=64), LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # a non-zero adapter, so the adapted and the base model differ
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    repeated = [p for p in prompts for _ in range(2)]
    settings = SamplingSettings(max_new_tokens=6, batch_size=20)
    real, taken = local.prefill_distinct, []
    monkeypatch.setattr(local, "prefill_distinct", lambda *a, **k: taken.append(real(*a, **k)) or taken[-1])
    once = sample(model, repeated, settings, **ids_of(tiny_tokenizer), seed=1)
    assert taken and taken[0] is not None
    monkeypatch.setattr(local, "prefill_distinct", lambda *a, **k: None)
    alone = sample(model, repeated, settings, **ids_of(tiny_tokenizer), seed=1)
    assert once.completion_ids == alone.completion_ids
    for a, b in zip(once.logps, alone.logps):
        assert a == pytest.approx(b, abs=1e-5)
    with model.disable_adapter():  # the adapter matters: the base model samples something else
        base = sample(model, repeated, settings, **ids_of(tiny_tokenizer), seed=1)
    assert base.logps != once.logps


def test_prefill_is_skipped_where_it_saves_nothing(policy):
    from alignlab.rollout.local import left_pad
    from alignlab.rollout.prefill import prefill_distinct

    distinct = [[5, 6], [7, 8, 9], [10], [11, 12]]
    assert prefill_distinct(policy, distinct, *left_pad(distinct, 0)) is None  # nothing repeats
    ones = [[5], [5], [6], [6]]
    assert prefill_distinct(policy, ones, *left_pad(ones, 0)) is None  # one-token prompts: no prefill to share
    pairs = [[5, 6], [5, 6], [7, 8, 9], [7, 8, 9]]
    cache = prefill_distinct(policy, pairs, *left_pad(pairs, 0))
    assert cache is not None and cache.get_seq_length() == 2
    # every row holds its own prompt's keys: rows 0 and 1 alike, rows 1 and 2 not
    keys = cache.layers[0].keys
    assert torch.equal(keys[0], keys[1]) and torch.equal(keys[2], keys[3]) and not torch.equal(keys[1], keys[2])


def test_left_pad_rounds_the_width_up():
    from alignlab.rollout.local import left_pad

    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, multiple_of=4)
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]] and mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    ids, _ = left_pad([[5, 6, 7, 9, 9]], pad_id=0, multiple_of=4)
    assert ids.tolist() == [[0, 0, 0, 5, 6, 7, 9, 9]]
    assert left_pad([[5, 6, 7]], pad_id=0)[0].tolist() == [[5, 6, 7]]


def test_generate_returns_the_completions_of_sample(policy, tiny_tokenizer, prompts):
    settings = SamplingSettings(max_new_tokens=5, temperature=0.8, top_p=0.95, batch_size=4)
    completions = generate(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=4)
    assert completions == sample(policy, prompts, settings, **ids_of(tiny_tokenizer), seed=4).completion_ids
    sampler = LocalSampler(policy, **ids_of(tiny_tokenizer))
    assert isinstance(sampler, Sampler)
    assert sampler.sample(prompts, settings, seed=4).completion_ids == completions


def test_empty_prompt_is_refused(policy, tiny_tokenizer):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sample(policy, [[5], []], SamplingSettings(), **ids_of(tiny_tokenizer))


def test_to_batch_right_pads_and_aligns_sampler_logps_with_token_logps():
    rollouts = Rollouts(
        prompt_ids=[[5, 6, 7], [8]],
        completion_ids=[[9, 2], [10, 11, 12]],
        logps=[[-0.5, -1.5], [-0.1, -0.2, -0.3]],
        finished=[True, False],
    )
    batch = to_batch(rollouts, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9, 2], [8, 10, 11, 12, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["loss_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    # Position t scores input_ids[:, t+1], as token_logps does.
    assert torch.allclose(batch["sampler_logps"], torch.tensor([[0, 0, -0.5, -1.5], [-0.1, -0.2, -0.3, 0]]))
    assert batch["finished"].tolist() == [True, False]
    assert torch.equal(batch["sampler_logps"] != 0, batch["loss_mask"][:, 1:].bool())


def test_rollouts_reject_rows_that_disagree():
    with pytest.raises(ValueError, match="row 0: 2 completion ids but 1 log-probs"):
        Rollouts([[1]], [[2, 3]], [[-0.1]], [False])
    with pytest.raises(ValueError, match="disagree on the number of rows"):
        Rollouts([[1], [2]], [[3]], [[-0.1]], [False])


def test_logp_mismatch_reports_gap_and_ratio_on_masked_tokens_only():
    trainer = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    sampler = trainer - torch.tensor([[0.1, 0.1, 50.0], [0.3, 0.1, 0.1]])  # the 50 sits outside the mask
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    figures = logp_mismatch(sampler, trainer, mask)
    assert figures["mean_abs_diff"] == pytest.approx(0.14, abs=1e-6)
    assert figures["max_abs_diff"] == pytest.approx(0.3, abs=1e-6)
    expected_ratio = (4 * torch.tensor(0.1).exp() + torch.tensor(0.3).exp()) / 5
    assert figures["mean_ratio"] == pytest.approx(expected_ratio.item(), abs=1e-6)


def test_vllm_backend_imports_without_vllm_and_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails even where it is installed
    module = importlib.reload(importlib.import_module("alignlab.rollout.vllm_backend"))
    with pytest.raises(ImportError, match=r"pip install alignlab\[vllm\]"):
        module.VLLMSampler("any/model")


@pytest.mark.parametrize("level", [1, 2])
def test_a_sleeping_engine_wakes_its_weights_for_the_sync_and_its_cache_for_sampling(tiny_model_dir, monkeypatch, level):
    # the stand-in engine checks vLLM's rules: no sampling while asleep, no reload into released weight
    # memory, each part woken once; at level 2 its weights are destroyed, so only a real sync restores them
    import fake_vllm

    from alignlab.rollout.vllm_backend import VLLMSampler

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    sampler = VLLMSampler(tiny_model_dir, enable_sleep_mode=True, sleep_level=level)
    engine = fake_vllm.ENGINES[-1]
    assert "sleep_level" not in engine.options  # alignlab's, not an engine option
    model = load_causal_lm(tiny_model_dir).eval()
    assert engine_gap(sampler, model) < 1e-5
    assert engine.asleep == {"weights", "kv_cache"}  # released for the update that follows
    perturbed(model, seed=0, scale=0.3)
    sampler.load_weights(model)
    assert engine_gap(sampler, model) < 1e-5
    assert engine.events == ["generate", f"sleep {level}", "wake weights", "reload", "wake kv_cache", "generate", f"sleep {level}"]


def test_a_lora_policy_syncs_only_its_adapter_to_an_adapter_engine(tiny_model_dir, monkeypatch):
    import fake_vllm

    from alignlab.models.lora import LoraSettings, apply_lora
    from alignlab.rollout.vllm_backend import VLLMSampler

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", fake_vllm)
    with pytest.raises(ValueError, match="use sleep_level 1"):
        VLLMSampler(tiny_model_dir, enable_lora=True, enable_sleep_mode=True, sleep_level=2)
    sampler = VLLMSampler(tiny_model_dir, enable_lora=True, enable_sleep_mode=True)
    engine = fake_vllm.ENGINES[-1]
    policy = perturbed(apply_lora(load_causal_lm(tiny_model_dir), LoraSettings(r=4)), seed=0, scale=0.3, only="lora_B").eval()
    for sync in (1, 2):
        sampler.load_weights(policy)
        adapters = sorted(p.name for p in sampler.work_dir.glob("adapter-*"))
        assert adapters == [f"adapter-{sync:06d}"]  # the previous one deleted
        written = {p.name for p in (sampler.work_dir / adapters[0]).iterdir()}  # peft adds a README.md
        assert {"adapter_config.json", "adapter_model.safetensors"} <= written and "model.safetensors" not in written
        assert engine_gap(sampler, policy) < 1e-5  # the engine samples with the policy's adapter
        perturbed(policy, seed=sync, scale=0.3, only="lora_")
    assert engine.reloads == 0  # the base weights were never sent
    assert [e for e in engine.events if e.startswith("generate")] == ["generate lora 1", "generate lora 2"]


def test_server_sampler_speaks_vllms_http_api_and_pushes_weights(tiny_model_dir, tmp_path):
    # a stand-in `vllm serve` (httpx's mock transport) that records every request and answers in
    # vLLM's shapes: token ids as "token_id:N", the drawn token's log-prob, finish_reason
    import json as json_

    import httpx
    from safetensors import safe_open

    from alignlab.models.lora import LoraSettings, apply_lora
    from alignlab.rollout.vllm_server import VLLMServerSampler

    calls = []

    def serve(request: httpx.Request) -> httpx.Response:
        body = json_.loads(request.content) if request.content else None
        calls.append((request.url.path, body))
        if request.url.path == "/v1/completions":
            n = 2 + body["seed"] % 3  # the row's length follows its seed
            tokens = [f"token_id:{body['prompt'][-1] + i}" for i in range(n)]
            return httpx.Response(200, json={"choices": [{"finish_reason": "stop" if n < 4 else "length", "logprobs": {
                "tokens": tokens, "token_logprobs": [-0.5 * (i + 1) for i in range(n)]}}]})
        if request.url.path == "/v1/load_lora_adapter":
            return httpx.Response(200, text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
        return httpx.Response(200, json={})

    sampler = VLLMServerSampler("http://server:8000/", "served-name", sync_dir=tmp_path / "sync",
                                transport=httpx.MockTransport(serve))
    assert calls[0] == ("/health", None)
    drawn = sampler.sample([[5, 6], [5, 6], [9]], SamplingSettings(max_new_tokens=7, temperature=0.7), seed=3)
    requests = [body for path, body in calls if path == "/v1/completions"]
    assert len({r["seed"] for r in requests}) == 3  # the same prompt twice: two different draws
    for r in requests:
        assert (r["model"], r["max_tokens"], r["temperature"], r["top_p"], r["top_k"], r["logprobs"]) == (
            "served-name", 7, 0.7, 1.0, -1, 0) and r["return_tokens_as_token_ids"]
    by_prompt = {json_.dumps(r["prompt"]) + str(r["seed"]): r for r in requests}
    for prompt, ids, logps, finished in zip(drawn.prompt_ids, drawn.completion_ids, drawn.logps, drawn.finished):
        assert ids == [prompt[-1] + i for i in range(len(ids))] and logps == [-0.5 * (i + 1) for i in range(len(ids))]
        assert finished == (len(ids) < 4)
    assert len(by_prompt) == 3
    with pytest.raises(ValueError, match="top_k 0 and top_p 1.0"):
        sampler.sample([[5]], SamplingSettings(top_p=0.9))

    # whole weights: every one written (GPT-2's output head shares the embedding), re-read, cache reset
    model = load_causal_lm(tiny_model_dir)
    calls.clear()
    sampler.load_weights(model)
    assert [c[0] for c in calls] == ["/collective_rpc", "/reset_prefix_cache"]
    assert calls[0][1] == {"method": "reload_weights", "kwargs": {"weights_path": str(tmp_path / "sync" / "sync-000001")}}
    with safe_open(str(tmp_path / "sync" / "sync-000001" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict()) and "lm_head.weight" in f.keys()
    # a LoRA policy: its adapter under a new name, the previous one unloaded, samples drawn with it
    policy = apply_lora(model, LoraSettings(r=4))
    for sync in (2, 3):
        calls.clear()
        sampler.load_weights(policy)
        expected = [("/v1/load_lora_adapter", {"lora_name": f"policy-{sync}", "lora_path": str(tmp_path / "sync" / f"sync-{sync:06d}")})]
        if sync == 3:
            expected.append(("/v1/unload_lora_adapter", {"lora_name": "policy-2"}))
        assert calls == expected
        assert sorted(p.name for p in (tmp_path / "sync").iterdir()) == [f"sync-{sync:06d}"]
    sampler.sample([[5]], SamplingSettings(max_new_tokens=3))
    assert calls[-1][1]["model"] == "policy-3"


def test_server_sampler_names_an_unreachable_server():
    import httpx

    from alignlab.rollout.vllm_server import VLLMServerSampler

    def down(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ConnectionError, match=r"http://nowhere:1: /health failed .* is `vllm serve` running there"):
        VLLMServerSampler("http://nowhere:1", "m", transport=httpx.MockTransport(down))
