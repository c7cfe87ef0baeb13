"""The models layer on tiny local models: loading, reward models, LoRA, references, saving."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from alignlab.models import (
    AdapterDisabled,
    FrozenCopy,
    LogpsCache,
    LoraSettings,
    Reference,
    apply_lora,
    disable_dropout,
    fingerprint,
    is_lora,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    merged_for_saving,
    model_fingerprint,
    resolve_device,
    reward_scores,
    save_pretrained_atomic,
)
from alignlab.models import reference as reference_module
from alignlab.models.build import new_causal_lm
from alignlab.ops.logps import token_logps

TEXTS = ["the film was a delight", "a dull movie", "i loved the soundtrack and the cast"]


def save_tiny(tokenizer, path, arch="gpt2", seed=0, **overrides):
    model = new_causal_lm(tokenizer, arch=arch, hidden_size=32, num_layers=1, num_heads=2, seed=seed)
    for key, value in overrides.items():
        setattr(model.config, key, value)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def batch(tokenizer, texts=TEXTS):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def no_hidden_leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


# --- loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_load_by_local_directory(tiny_tokenizer, tmp_path, arch):
    original = save_tiny(tiny_tokenizer, tmp_path, arch=arch)
    tokenizer = load_tokenizer(tmp_path)
    model = load_causal_lm(tmp_path)
    assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token_id == tiny_tokenizer.pad_token_id
    ids, mask = batch(tokenizer)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits,
                           original(input_ids=ids, attention_mask=mask).logits)


def test_load_dtype_and_device(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="float64"):
        load_causal_lm(tiny_model_dir, dtype="float64")


def test_missing_or_wrong_paths_give_clear_errors(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_causal_lm(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="runs/x/sft/model"):
        load_causal_lm("runs/x/sft/model")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_causal_lm(tmp_path)
    with pytest.raises(NotADirectoryError):
        load_tokenizer(tiny_model_dir / "config.json")


def test_tokenizer_without_pad_falls_back_to_eos(tiny_tokenizer, tmp_path, caplog):
    no_pad = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer, bos_token="<s>", eos_token="</s>"
    )
    assert no_pad.pad_token is None
    no_pad.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="alignlab.models.load"):
        tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert "no pad token" in caplog.text


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_disable_dropout(tiny_tokenizer):
    ids, mask = batch(tiny_tokenizer)
    for arch, rates in [("gpt2", dict(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)),
                        ("llama", dict(attention_dropout=0.5))]:
        torch.manual_seed(0)
        model = new_causal_lm(tiny_tokenizer, arch=arch, hidden_size=32, num_layers=1, num_heads=2)
        config = model.config
        for key, value in rates.items():
            setattr(config, key, value)
        model = type(model)(config)  # rebuilt so the modules pick the rates up
        model.train()
        run = lambda: model(input_ids=ids, attention_mask=mask).logits  # noqa: E731
        assert not torch.equal(run(), run()), arch  # dropout is really on
        assert disable_dropout(model) > 0
        assert torch.equal(run(), run()), arch
        assert model.config.to_dict()[next(iter(rates))] == next(iter(rates.values()))  # config untouched


# --- reward models ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_scores_of_padded_batch_equal_rows_alone(tiny_tokenizer, tmp_path, arch):
    save_tiny(tiny_tokenizer, tmp_path, arch=arch)
    model = load_reward_model(tmp_path, tokenizer=tiny_tokenizer)
    assert model.config.pad_token_id == tiny_tokenizer.pad_token_id
    ids, mask = batch(tiny_tokenizer)
    assert (mask == 0).any()  # the batch really is padded
    with torch.no_grad():
        scores = reward_scores(model, ids, mask)
        assert scores.shape == (len(TEXTS),) and scores.dtype == torch.float32
        alone = torch.cat([reward_scores(model, *batch(tiny_tokenizer, [text])) for text in TEXTS])
    torch.testing.assert_close(scores, alone, rtol=0, atol=1e-5)
    assert scores.std() > 0  # different texts, different scores


def test_reward_model_saves_and_loads_with_plain_transformers(tiny_tokenizer, tiny_model_dir, tmp_path):
    model = load_reward_model(tiny_model_dir, tokenizer=tiny_tokenizer)
    ids, mask = batch(tiny_tokenizer)
    out = save_pretrained_atomic(model, tiny_tokenizer, tmp_path / "rm")
    plain, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]  # the head came back
    assert plain.config.num_labels == 1
    assert plain.config.pad_token_id == tiny_tokenizer.pad_token_id
    with torch.no_grad():  # alignlab runs gpt2's gelu_new as one fused kernel: equal up to rounding
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits[:, 0],
                                   reward_scores(model, ids, mask), rtol=0, atol=1e-6)
    # Loading a saved reward model with alignlab keeps the trained head too.
    again = load_reward_model(out)
    assert torch.equal(again.score.weight, model.score.weight)


def test_reward_head_init_is_deterministic_and_leaves_global_rng_alone(tiny_tokenizer, tiny_model_dir):
    state = torch.get_rng_state()
    first = load_reward_model(tiny_model_dir, tokenizer=tiny_tokenizer)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(1234)  # a different global state must not matter
    second = load_reward_model(tiny_model_dir, tokenizer=tiny_tokenizer)
    other = load_reward_model(tiny_model_dir, tokenizer=tiny_tokenizer, head_seed=1)
    assert torch.equal(first.score.weight, second.score.weight)
    assert not torch.equal(first.score.weight, other.score.weight)
    assert 0 < first.score.weight.std() < 1


def test_reward_model_rejects_multi_label_classifier(tiny_tokenizer, tmp_path):
    save_tiny(tiny_tokenizer, tmp_path / "lm")
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=3)
    classifier.save_pretrained(tmp_path / "cls")
    with pytest.raises(ValueError, match="3 labels"):
        load_reward_model(tmp_path / "cls", tokenizer=tiny_tokenizer)


# --- LoRA ---------------------------------------------------------------------------------------


def perturb_adapters(peft_model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def test_lora_trains_only_adapters(tiny_tokenizer, tiny_model_dir):
    policy = apply_lora(load_causal_lm(tiny_model_dir), LoraSettings(r=4, alpha=8))
    assert is_lora(policy)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    reward = apply_lora(load_reward_model(tiny_model_dir, tokenizer=tiny_tokenizer), LoraSettings(r=4), task="reward")
    trainable = [n for n, p in reward.named_parameters() if p.requires_grad]
    head = [n for n in trainable if "score" in n]
    assert head and all("lora_" in n or n in head for n in trainable)
    assert not any("score" in n and "lora_" in n for n in trainable)  # head trained in full, no LoRA on it
    with pytest.raises(ValueError, match="unknown LoRA task"):
        apply_lora(load_causal_lm(tiny_model_dir), LoraSettings(), task="value")


def test_adapter_disabled_reference_is_the_base_model(tiny_tokenizer, tiny_model_dir):
    base = load_causal_lm(tiny_model_dir)
    policy = apply_lora(load_causal_lm(tiny_model_dir), LoraSettings(r=4, target_modules=["c_attn", "c_fc"]))
    reference = AdapterDisabled(policy)
    assert isinstance(reference, Reference)
    ids, mask = batch(tiny_tokenizer)
    with torch.no_grad():
        base_logps, base_mask = token_logps(base, ids, mask)
    ref_logps, ref_mask = reference.token_logps(ids, mask)
    torch.testing.assert_close(ref_logps, base_logps)
    assert torch.equal(ref_mask, base_mask) and not ref_logps.requires_grad

    perturb_adapters(policy)
    policy.train()
    ref_after, _ = reference.token_logps(ids, mask)
    policy_after, _ = token_logps(policy, ids, mask)
    torch.testing.assert_close(ref_after, base_logps)
    assert (policy_after - base_logps).abs().max() > 1e-3  # the adapters matter, and were switched off
    assert policy.training  # train mode restored
    with pytest.raises(TypeError):
        AdapterDisabled(base)


def test_merged_lora_save_loads_with_plain_transformers(tiny_tokenizer, tiny_model_dir, tmp_path):
    policy = apply_lora(load_causal_lm(tiny_model_dir), LoraSettings(r=4))
    perturb_adapters(policy)
    ids, mask = batch(tiny_tokenizer)
    with torch.no_grad():
        expected = policy(input_ids=ids, attention_mask=mask).logits
    out = save_pretrained_atomic(policy, tiny_tokenizer, tmp_path / "merged")
    assert not (out / "adapter_config.json").exists()
    assert list(out.glob("*.safetensors"))
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not is_lora(plain)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=1e-5)
        # The training model is untouched: still LoRA, still the same function.
        assert is_lora(policy)
        torch.testing.assert_close(policy(input_ids=ids, attention_mask=mask).logits, expected, atol=0, rtol=0)
    assert plain.generation_config.pad_token_id == tiny_tokenizer.pad_token_id
    assert plain.generation_config.eos_token_id == tiny_tokenizer.eos_token_id
    assert merged_for_saving(plain) is plain


def test_lora_reward_model_export_keeps_the_trained_head(tiny_tokenizer, tiny_model_dir, tmp_path):
    reward = apply_lora(load_reward_model(tiny_model_dir, tokenizer=tiny_tokenizer), LoraSettings(r=4), task="reward")
    perturb_adapters(reward)
    with torch.no_grad():  # "train" the head: it is saved only if modules_to_save was honoured
        for name, param in reward.named_parameters():
            if "score" in name and param.requires_grad:
                param.add_(1.0)
    ids, mask = batch(tiny_tokenizer)
    with torch.no_grad():
        expected = reward_scores(reward, ids, mask)
    out = save_pretrained_atomic(reward, tiny_tokenizer, tmp_path / "rm")
    plain, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits[:, 0], expected,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,task", [("gpt2", "causal_lm"), ("llama", "causal_lm"), ("gpt2", "reward")])
def test_merged_state_folds_lora_in_as_peft_does(tiny_tokenizer, tmp_path, arch, task):
    # the merge a sharded LoRA model's gathered weights get (no module to merge in place) against
    # peft's own merge_and_unload: GPT-2's Conv1D stores its weight transposed, a reward head is a trained copy
    from alignlab.models.build import new_causal_lm
    from alignlab.models.lora import merged_state

    new_causal_lm(tiny_tokenizer, arch=arch, hidden_size=32, num_layers=2, num_heads=2).save_pretrained(tmp_path)
    base = load_causal_lm(tmp_path) if task == "causal_lm" else load_reward_model(tmp_path, tokenizer=tiny_tokenizer)
    start = {k: v.clone() for k, v in base.state_dict().items()}
    model = apply_lora(base, LoraSettings(r=4, alpha=12), task=task)
    perturb_adapters(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modules_to_save" in name:
                param.add_(1.0)
    ours = merged_state(model, model.state_dict())
    theirs = merged_for_saving(model).state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:  # float32 sums of the same products in the same order
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-6, rtol=0, msg=key)
    assert max((ours[k] - start[k]).abs().max() for k in start if "attn" in k) > 1e-2, "no adapter was folded in"


# --- frozen copy ---------------------------------------------------------------------------------


def test_frozen_copy_ignores_policy_updates(tiny_tokenizer, tiny_model_dir):
    policy = load_causal_lm(tiny_model_dir)
    reference = FrozenCopy(policy)
    assert isinstance(reference, Reference)
    assert not any(p.requires_grad for p in reference.model.parameters())
    assert not reference.model.training
    ids, mask = batch(tiny_tokenizer)
    before, _ = reference.token_logps(ids, mask)

    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    policy_logps, policy_mask = token_logps(policy, ids, mask)
    (-(policy_logps.sum())).backward()
    optimizer.step()

    after, _ = reference.token_logps(ids, mask)
    assert torch.equal(before, after)
    assert not torch.equal(token_logps(policy, ids, mask)[0], policy_logps)  # the policy did move
    loaded = FrozenCopy.from_pretrained(tiny_model_dir)
    torch.testing.assert_close(loaded.token_logps(ids, mask)[0], before)


def test_frozen_copy_of_lora_policy_is_merged(tiny_tokenizer, tiny_model_dir):
    policy = apply_lora(load_causal_lm(tiny_model_dir), LoraSettings(r=4))
    perturb_adapters(policy)
    reference = FrozenCopy(policy)
    assert not is_lora(reference.model)
    ids, mask = batch(tiny_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(reference.token_logps(ids, mask)[0], token_logps(policy, ids, mask)[0],
                                   atol=1e-5, rtol=1e-5)


# --- fingerprints and the log-prob cache -----------------------------------------------------------


def test_fingerprint_is_canonical():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint({"s": LoraSettings(r=4)}) != fingerprint({"s": LoraSettings(r=8)})
    with pytest.raises(TypeError, match="object"):
        fingerprint({"a": object()})


def test_model_fingerprint_follows_the_weights(tiny_tokenizer, tmp_path):
    save_tiny(tiny_tokenizer, tmp_path / "a", seed=0)
    save_tiny(tiny_tokenizer, tmp_path / "same", seed=0)
    save_tiny(tiny_tokenizer, tmp_path / "b", seed=1)
    assert model_fingerprint(tmp_path / "a") == model_fingerprint(tmp_path / "same")
    assert model_fingerprint(tmp_path / "a") != model_fingerprint(tmp_path / "b")
    save_tiny(tiny_tokenizer, tmp_path / "c", seed=0, attn_pdrop=0.5)  # config-only change
    assert model_fingerprint(tmp_path / "a") != model_fingerprint(tmp_path / "c")

    model = load_causal_lm(tmp_path / "a")
    in_memory = model_fingerprint(model)
    assert in_memory == model_fingerprint(load_causal_lm(tmp_path / "same"))
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    assert model_fingerprint(model) != in_memory
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_fingerprint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        model_fingerprint("no-such-org/no-such-model")  # offline: a hub id that is not cached


def test_logps_cache_round_trip_and_keys(tmp_path):
    key = {"model": "abc", "data": "def", "settings": {"max_length": 64}}
    cache = LogpsCache(tmp_path / "cache", key)
    assert not cache.exists()
    tensors = {"chosen_logps": torch.randn(4, 7), "rejected_logps": torch.randn(4, 7)}
    tensors["view"] = tensors["chosen_logps"][:, :3]  # shares memory with another entry
    path = cache.save(tensors)
    assert path == cache.path and cache.exists()
    loaded = LogpsCache(tmp_path / "cache", dict(key)).load()
    assert set(loaded) == set(tensors)
    for name in tensors:
        assert torch.equal(loaded[name], tensors[name])
    assert os.listdir(tmp_path / "cache") == [path.name]  # no temporary files left

    paths = {cache.path}
    for changed in ("model", "data"):
        paths.add(LogpsCache(tmp_path / "cache", {**key, changed: "other"}).path)
    paths.add(LogpsCache(tmp_path / "cache", {**key, "settings": {"max_length": 128}}).path)
    assert len(paths) == 4

    # A file stored under another key's name is refused rather than trusted.
    impostor = LogpsCache(tmp_path / "cache", {**key, "data": "other"})
    os.replace(cache.path, impostor.path)
    with pytest.raises(ValueError, match="different key"):
        impostor.load()


def test_logps_cache_save_is_atomic(tmp_path, monkeypatch):
    cache = LogpsCache(tmp_path, {"k": 1})
    cache.save({"x": torch.zeros(3)})

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(reference_module, "save_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        cache.save({"x": torch.ones(3)})
    assert os.listdir(tmp_path) == [cache.path.name]
    assert torch.equal(cache.load()["x"], torch.zeros(3))  # the old cache survives intact


# --- atomic save ----------------------------------------------------------------------------------


def test_save_pretrained_atomic_replaces_or_keeps_the_old_model(tiny_tokenizer, tiny_model_dir, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    model = load_causal_lm(tiny_model_dir)
    save_pretrained_atomic(model, tiny_tokenizer, out)
    assert not (out / "stale.txt").exists()
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert no_hidden_leftovers(tmp_path) == []
    assert AutoTokenizer.from_pretrained(out).pad_token_id == tiny_tokenizer.pad_token_id

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    model.save_pretrained = crash
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained_atomic(model, tiny_tokenizer, out)
    assert (out / "config.json").is_file()  # the previous model is still there, whole
    assert no_hidden_leftovers(tmp_path) == []
