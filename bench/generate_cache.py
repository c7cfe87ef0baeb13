"""How fast transformers' `generate` samples on a GPU with its default dynamic KV cache against a
static cache (which `generate` compiles into CUDA graphs on a GPU): the question behind the RL
benchmark's GPU figures, where `generate` is 90% of every step.

    python bench/generate_cache.py [--batch 256] [--prompt 16] [--new 32] [--repeats 5]

The model is bench/common.py's GPT-2-small shape (hidden 768, 12 layers, vocab 2048), random
weights, under bf16 autocast as the online stages sample. Prints the first call (compilation
included), the median of the following calls, and the first call at a second prompt length
(a recompilation, if the static cache's shapes change).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    a = parser.parse_args()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=2048, n_embd=768, n_layer=12, n_head=12, n_positions=256,
                        bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model = GPT2LMHeadModel(config).cuda().eval()

    def call(cache: str | None, prompt: int):
        ids = torch.randint(3, 2048, (a.batch, prompt), device="cuda")
        mask = torch.ones_like(ids)
        mask[::4, : prompt // 4] = 0  # some left padding, as batched prompts have
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                  top_p=1.0, max_new_tokens=a.new, min_new_tokens=a.new, pad_token_id=2,
                                  cache_implementation=cache, output_logits=True, return_dict_in_generate=True)

    for cache in (None, "static"):
        first = timed(lambda: call(cache, a.prompt))
        rest = [timed(lambda: call(cache, a.prompt)) for _ in range(a.repeats)]
        other = timed(lambda: call(cache, a.prompt + 4))
        again = statistics.median(timed(lambda: call(cache, a.prompt + 4)) for _ in range(3))
        print(f"cache {cache or 'dynamic'}: first call {first:.2f} s, then median {statistics.median(rest):.3f} s "
              f"({statistics.median(rest) / a.new * 1e3:.1f} ms/token); prompt +4: first {other:.2f} s, "
              f"then {again:.3f} s", flush=True)


if __name__ == "__main__":
    main()
