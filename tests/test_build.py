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
        if arch == "gpt2":
            # alignlab runs gpt2's gelu_new as one fused kernel and plain transformers as its op-by-op
            # formula: the same function to ~2.4e-7 a value, whose rounding depends on the CPU's vector
            # width (bitwise equal on AVX2, not on AVX-512); 1e-5 is ~40 such errors through a layer
            torch.testing.assert_close(model(ids).logits, again(ids).logits, rtol=0, atol=1e-5)
        else:
            # llama/qwen2 run the same modules in both: the same ops in the same process round the same
            assert torch.equal(model(ids).logits, again(ids).logits)
