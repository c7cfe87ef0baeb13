"""The practical limit: a bare PyTorch loop over exactly alignlab's batches.

Only forward, loss, backward and `torch.optim.AdamW(fused=True)` step, the optimizer alignlab and
TRL step (the per-tensor loop only where torch has no fused kernel; the run records which it
stepped). No gradient clipping, no logging, no checkpoint. The same model (with alignlab's fused
GELU) and the same padded batches (alignlab's tokenization, collation and length-grouped order,
all built before the clock starts). Log-probs come from
`F.cross_entropy(reduction="none")`, the plainest fused way to get them.

- job dpo: one forward over chosen+rejected, reference log-probs computed beforehand (untimed),
  sigmoid DPO loss (beta 0.1), mean over pairs.
- job sft: next-token NLL on completion tokens, normalised by the step's completion-token count.

Run as a child of bench/dpo.py or bench/sft.py; the clock covers the loop over the steps only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

BETA = 0.1


def _batches(job: str, a) -> list[dict]:
    from alignlab.data.collate import collate_pairs, pad_rows
    from alignlab.data.formats import load_preferences, load_sft
    from alignlab.data.tokenize import tokenize_preferences, tokenize_sft
    from alignlab.models import load_tokenizer

    tokenizer = load_tokenizer(common.model_dir())
    spec = common.SPEC
    if job == "dpo":
        path = common.data_file("pairs", a.steps * a.batch)
        pairs, _ = tokenize_preferences(load_preferences(path), tokenizer, spec.max_length, spec.max_prompt_length)
        order = common.alignlab_batches("pairs", path, a.batch, seed=0, group_by_length=True)
        return [collate_pairs([pairs[i] for i in idx], tokenizer.pad_token_id) for idx in order]
    path = common.data_file("sft", a.steps * a.batch)
    rows, _ = tokenize_sft(load_sft(path), tokenizer, spec.max_length, spec.max_prompt_length)
    order = common.alignlab_batches("sft", path, a.batch, seed=0, group_by_length=True)
    return [pad_rows([rows[i] for i in idx], tokenizer.pad_token_id) for idx in order]


def _sequence_logps(model, batch):
    import torch.nn.functional as F

    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    targets = ids[:, 1:]
    token_logps = -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    loss_mask = batch["loss_mask"][:, 1:].to(token_logps.dtype)
    return token_logps.view(targets.shape) * loss_mask, loss_mask


def child(argv: list[str]) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    parser = common.child_parser("one plain PyTorch run")
    parser.add_argument("--job", choices=["dpo", "sft"], required=True)
    a = parser.parse_args(argv)
    common.child_setup(a.threads)
    torch.manual_seed(0)
    from alignlab.models.fused import fuse_activations

    model = AutoModelForCausalLM.from_pretrained(common.model_dir(), dtype=torch.float32)
    # the same model compute as alignlab (its loaders fuse gpt2's GELU), so the ratio measures the loop
    fuse_activations(model)
    batches = _batches(a.job, a)[: a.steps]
    if a.job == "dpo":
        model.eval()
        with torch.no_grad():  # the reference is the starting model: precompute, untimed
            for batch in batches:
                logps, _ = _sequence_logps(model, batch)
                seq = logps.sum(-1)
                batch["ref"] = seq
    model.train()
    try:  # the fused kernel, as alignlab (alignlab.train.optim) and TRL (adamw_torch_fused) use
        optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError):  # a torch without it for this device
        optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / a.steps)
    probe = common.Probe()
    result = {"rss_before_train_mb": common.rss_mb(), "peak_rss_before_train_mb": common.peak_rss_mb()}
    losses = []
    probe.attach(model)
    start = time.perf_counter()
    for batch in batches:
        logps, mask = _sequence_logps(model, batch)
        if a.job == "dpo":
            seq = logps.sum(-1)
            half = seq.shape[0] // 2
            margin = (seq[:half] - batch["ref"][:half]) - (seq[half:] - batch["ref"][half:])
            loss = -F.logsigmoid(BETA * margin).mean()
        else:
            loss = -logps.sum() / mask.sum()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    result["train_s"] = time.perf_counter() - start
    result.update(probe.figures(start))
    probe.detach()
    losses = [float(x) for x in losses]
    result.update({"tool": "plain", "losses": losses, "loss_first": losses[0], "loss_last": losses[-1],
                   "notes": f"plain {a.job} loop, no clipping, {result.get('optimizer') or 'AdamW'}"})
    common.write_result(a.result, result)


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[1:])
    else:
        raise SystemExit("run through bench/dpo.py or bench/sft.py")
