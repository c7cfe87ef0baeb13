"""Sampling speed: `model.generate` (what alignlab ships) against a hand-written decode loop.

Both sample from the same tiny GPT-2 (the quickstart's size: vocab 1024, hidden 128, 2 layers,
4 heads, 128 positions; random weights) for the same 128 left-padded prompts of the built-in
sentiment task, 40 new tokens, one batch of 128, one torch thread, and both return what an RL
loop needs: `Rollouts` with the ids and the log-prob of each drawn token under the tempered,
untruncated distribution.

- hf:   `alignlab.rollout.local.sample`: `model.generate(do_sample=True, output_logits=True,
        return_dict_in_generate=True)`, then log_softmax(logits / T) at the drawn ids.
- loop: `hand_sample` below: the model's forward with a `DynamicCache` and position ids from the
        left-padded mask, torch top-k/top-p filters, `torch.multinomial`, stop when every row
        has produced EOS.

Before timing, it checks that the two draw the same tokens with the same log-probs: seeded alike
(generate from the global stream, the loop from a Generator with the same seed, which yields the
same numbers on CPU), the same filters and the same multinomial call must give identical ids,
with and without top-k/top-p. The loop is what alignlab would use if it were >= 1.2x faster.

    .venv/bin/python bench/sampling.py [--repeats 5] [--threads 1]

Prints the median wall time and process CPU time of each over the repeats, and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

PROMPTS, NEW_TOKENS, BATCH = 128, 40, 128


def build():
    from alignlab.models.build import new_causal_lm, train_bpe_tokenizer
    from alignlab.tasks import get_task

    task = get_task("sentiment")
    tokenizer = train_bpe_tokenizer(task.corpus(2000, seed=0), vocab_size=1024)
    model = new_causal_lm(tokenizer, "gpt2", hidden_size=128, num_layers=2, num_heads=4, max_positions=128)
    model.eval()
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in task.prompts("test", PROMPTS, seed=0)]
    return model, tokenizer, prompts


def filter_logits(logits, top_k, top_p):
    """-inf outside the top-k, then outside the smallest set of top tokens holding top_p mass."""
    if 0 < top_k < logits.shape[-1]:
        logits = logits.masked_fill(logits < logits.topk(top_k).values[:, -1:], float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        ordered = ordered.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))
        logits = logits.scatter(-1, order, ordered)
    return logits


@torch.no_grad()
def hand_sample(model, prompts, settings, *, pad_id, eos_id, seed=0):
    """`alignlab.rollout.local.sample` with a hand-written decode loop in place of generate."""
    from transformers import DynamicCache

    from alignlab.rollout.base import Rollouts
    from alignlab.rollout.local import _cut_at_stop, left_pad

    generator = torch.Generator().manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    completions, logps = [[] for _ in prompts], [[] for _ in prompts]
    for start in range(0, len(order), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], pad_id)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache(config=model.config)
        done = torch.zeros(len(idx), dtype=torch.bool)
        tokens, token_logps = [], []
        for _ in range(settings.max_new_tokens):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                           use_cache=True, logits_to_keep=1).logits[:, -1].float() / settings.temperature
            probs = filter_logits(logits, settings.top_k, settings.top_p).softmax(-1)
            drawn = torch.multinomial(probs, 1, generator=generator)
            tokens.append(torch.where(done[:, None], pad_id, drawn))
            token_logps.append(logits.log_softmax(-1).gather(-1, drawn))
            done |= tokens[-1][:, 0] == eos_id
            if done.all():
                break
            ids, mask = tokens[-1], torch.cat([mask, torch.ones_like(tokens[-1])], dim=1)
            positions = positions[:, -1:] + 1
        rows_ids, rows_logps = torch.cat(tokens, 1).tolist(), torch.cat(token_logps, 1).tolist()
        for row, i in enumerate(idx):
            completions[i], logps[i] = _cut_at_stop(rows_ids[row], rows_logps[row], {eos_id})
    finished = [bool(c) and c[-1] == eos_id for c in completions]
    return Rollouts([list(p) for p in prompts], completions, logps, finished)


def main() -> None:
    from alignlab.rollout import SamplingSettings
    from alignlab.rollout.local import sample

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, prompts = build()
    ids = {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id}
    settings = SamplingSettings(max_new_tokens=NEW_TOKENS, temperature=1.0, batch_size=BATCH)

    for check in (settings, settings.model_copy(update={"temperature": 0.7, "top_k": 50, "top_p": 0.9})):
        hf, loop = sample(model, prompts, check, **ids, seed=3), hand_sample(model, prompts, check, **ids, seed=3)
        same = hf.completion_ids == loop.completion_ids
        gap = max(abs(a - b) for ra, rb in zip(hf.logps, loop.logps) for a, b in zip(ra, rb))
        print(f"T={check.temperature} top_k={check.top_k} top_p={check.top_p}: identical ids {same}, "
              f"max |logp diff| {gap:.1e}, rows ended by EOS {sum(hf.finished)}/{len(hf)}")
        if not same:
            raise SystemExit("the two samplers drew different tokens; timings would not compare like with like")

    wall, cpu = {"hf": [], "loop": []}, {"hf": [], "loop": []}
    for r in range(args.repeats):
        for name, fn in (("hf", sample), ("loop", hand_sample)):  # alternate, so drift hits both
            w, c = time.perf_counter(), time.process_time()
            fn(model, prompts, settings, **ids, seed=r)
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    lengths = [len(p) for p in prompts]
    print(f"{PROMPTS} prompts ({min(lengths)}-{max(lengths)} tokens) x {NEW_TOKENS} new tokens, batch {BATCH}, "
          f"{args.threads} thread(s), median of {args.repeats}")
    for label, times in (("wall", wall), ("cpu", cpu)):
        hf, loop = statistics.median(times["hf"]), statistics.median(times["loop"])
        print(f"{label}: hf generate {hf * 1000:.1f} ms, hand loop {loop * 1000:.1f} ms, "
              f"hand loop speed-up {hf / loop:.2f}x")


if __name__ == "__main__":
    main()
