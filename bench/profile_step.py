"""Where alignlab's training step spends its time, piece by piece, on the benchmark's model.

    bench/.venv-trl/bin/python bench/profile_step.py [--threads 2] [--repeats 15]

Times, on one real DPO batch (8 pairs = 16 rows, alignlab's collation), the pieces of one step
as alignlab runs them against the cheapest plain-PyTorch way to do the same thing:

- log-probs of the taken tokens, forward+backward: alignlab's `token_logps` (which hands the
  strided view `logits[:, :-1]` to `selective_log_softmax`) vs the same function on the full,
  contiguous logits with the result sliced afterwards vs `F.cross_entropy(reduction="none")`;
- the same three under `torch.no_grad()` (reference precompute / live reference);
- the optimizer step: `torch.optim.AdamW` as alignlab builds it (on CPU torch then runs its
  per-tensor loop) vs `foreach=True` vs `fused=True` (what TRL gets from transformers);
- `clip_grad_norm_` (alignlab clips at 1.0 each step; the plain loop does not);
- the model's forward+backward with each of the three log-prob paths (the step's bulk).

Medians of `--repeats` timings after two warm-ups. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    a = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from alignlab.data.collate import collate_pairs
    from alignlab.data.formats import load_preferences
    from alignlab.data.tokenize import tokenize_preferences
    from alignlab.models import load_tokenizer
    from alignlab.ops import token_logps
    from alignlab.ops.selective import selective_log_softmax

    torch.set_num_threads(a.threads)
    common.build_model()
    tokenizer = load_tokenizer(common.model_dir())
    path = common.data_file("pairs", 160)
    pairs, _ = tokenize_preferences(load_preferences(path), tokenizer, common.SPEC.max_length,
                                    common.SPEC.max_prompt_length)
    first = common.alignlab_batches("pairs", path, 8, seed=0, group_by_length=True)
    # a batch of median width, so the figures speak for a typical step
    batches = sorted(first, key=lambda idx: max(max(len(pairs[i][0]), len(pairs[i][1])) for i in idx))
    batch = collate_pairs([pairs[i] for i in batches[len(batches) // 2]], tokenizer.pad_token_id)
    ids, mask, loss_mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    model = AutoModelForCausalLM.from_pretrained(common.model_dir(), dtype=torch.float32)
    model.train()
    with torch.no_grad():
        logits_fixed = model(input_ids=ids, attention_mask=mask).logits
    rows = []

    def logps_variants(logits, grad: bool):
        targets = ids[:, 1:]
        shifted = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)  # a dummy target for the last position

        def run(fn):
            def go():
                leaf = logits.detach().requires_grad_(grad)
                out = fn(leaf)
                if grad:
                    out.sum().backward()
            return go

        return {
            "selective_log_softmax(logits[:, :-1]) (alignlab now)": run(lambda x: selective_log_softmax(x[:, :-1], targets)),
            "selective_log_softmax(logits)[:, :-1] (contiguous)": run(lambda x: selective_log_softmax(x, shifted)[:, :-1]),
            "F.cross_entropy(reduction='none')": run(lambda x: -F.cross_entropy(
                x[:, :-1].reshape(-1, x.shape[-1]), targets.reshape(-1), reduction="none")),
        }

    for name, fn in logps_variants(logits_fixed, grad=True).items():
        rows.append((f"log-probs fwd+bwd: {name}", timed(fn, a.repeats)))
    with torch.no_grad():
        for name, fn in logps_variants(logits_fixed, grad=False).items():
            rows.append((f"log-probs no_grad: {name}", timed(fn, a.repeats)))

    def forward_backward():
        out = token_logps(model, ids, mask, loss_mask)[0].sum()
        out.backward()

    rows.append(("model forward+backward through alignlab token_logps", timed(forward_backward, a.repeats)))

    def contiguous_forward_backward():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        shifted = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
        logps = selective_log_softmax(logits, shifted)[:, :-1]
        keep = loss_mask[:, 1:] != 0
        torch.where(keep, logps, torch.zeros((), dtype=logps.dtype)).sum().backward()

    rows.append(("model forward+backward through selective_log_softmax on the full logits, sliced after",
                 timed(contiguous_forward_backward, a.repeats)))

    def plain_forward_backward():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        token = -F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        (token * loss_mask[:, 1:].reshape(-1)).sum().backward()

    rows.append(("model forward+backward through F.cross_entropy(reduction='none')",
                 timed(plain_forward_backward, a.repeats)))
    forward_backward()  # leave gradients in place for the optimizer and clipping timings
    rows.append(("clip_grad_norm_(1.0)", timed(lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0),
                                               a.repeats)))
    for label, kwargs in [("AdamW default (alignlab; per-tensor loop on CPU)", {}),
                          ("AdamW foreach=True", {"foreach": True}),
                          ("AdamW fused=True (TRL via transformers)", {"fused": True})]:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, **kwargs)
        rows.append((f"optimizer step: {label}", timed(optimizer.step, a.repeats)))

    print(f"batch: {ids.shape[0]} rows x {ids.shape[1]} positions, vocab {model.config.vocab_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {a.threads} threads\n")
    print("| piece | median ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
