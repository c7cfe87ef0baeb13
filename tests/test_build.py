import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.models.build import new_causal_lm


def test_tokenizer_has_distinct_special_tokens(tiny_tokenizer):
    ids = {tiny_tokenizer.pad_token_id, tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id}
    assert len(ids) == 3 and None not in ids
    text = "the film was a delight"
    assert tiny_tokenizer.decode(tiny_tokenizer(text)["input_ids"]) == text


def test_each_architecture_builds_and_round_trips(tiny_tokenizer, tmp_path):
    for arch in ("gpt2", "llama", "qwen2"):
        model = new_causal_lm(tiny_tokenizer, arch=arch, hidden_size=32, num_layers=1, num_heads=2)
        model.save_pretrained(tmp_path / arch)
        tiny_tokenizer.save_pretrained(tmp_path / arch)
        again = AutoModelForCausalLM.from_pretrained(tmp_path / arch)
        tok = AutoTokenizer.from_pretrained(tmp_path / arch)
        ids = torch.tensor([tok("the film")["input_ids"]])
        assert torch.equal(model(ids).logits, again(ids).logits)
