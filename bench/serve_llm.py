"""Throughput of `alignlab serve-llm` under concurrent ordinary OpenAI requests (no seed).

Starts the server in this process on a 3.7M-parameter GPT-2 (the bench's size, random weights, a
BPE tokenizer trained on the sentiment task's reviews), fires 8 concurrent /v1/completions
requests without a seed (as every OpenAI client sends them), 32 sampled tokens each, and reports
completion tokens per second, the median of 5 rounds after one warm-up round.

    .venv/bin/python bench/serve_llm.py            # this checkout
    PYTHONPATH=/path/to/other/src .venv/bin/python bench/serve_llm.py   # another version, same machine
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time

import httpx
import torch


def build_model(path: str) -> None:
    from alignlab.models.build import new_causal_lm, train_bpe_tokenizer
    from alignlab.tasks.review_generator import generate_reviews

    texts = generate_reviews(2000, seed=0)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=2048)
    model = new_causal_lm(tokenizer, arch="gpt2", hidden_size=256, num_layers=4, num_heads=4)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def round_tokens_per_s(base_url: str, concurrent: int, max_tokens: int) -> float:
    results = [0] * concurrent
    barrier = threading.Barrier(concurrent)

    def ask(i: int) -> None:
        barrier.wait()
        reply = httpx.post(f"{base_url}/completions", timeout=300, json={
            "model": "bench", "prompt": f"the film was {i}", "max_tokens": max_tokens, "temperature": 1.0})
        results[i] = reply.json()["usage"]["completion_tokens"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(concurrent)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(results) / (time.perf_counter() - start)


def main() -> None:
    from alignlab.feedback.ai.llm import LocalLLM
    from alignlab.feedback.ai.llm.server import make_app, start_in_thread

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as path:
        build_model(path)
        llm = LocalLLM(path, device="cpu", batch_size=16)
        base_url, stop = start_in_thread(make_app(llm, "bench"))
        try:
            round_tokens_per_s(base_url, 8, 32)  # warm-up
            rates = [round_tokens_per_s(base_url, 8, 32) for _ in range(5)]
        finally:
            stop()
    print(f"8 concurrent seedless requests x 32 tokens: {statistics.median(rates):.1f} tok/s "
          f"(median of 5; min {min(rates):.1f}, max {max(rates):.1f})")


if __name__ == "__main__":
    main()
