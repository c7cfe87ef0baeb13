"""SFT: alignlab's `sft` stage against TRL's SFTTrainer (and the plain PyTorch loop), one command.

    bench/.venv-trl/bin/python bench/sft.py [--steps 20] [--batch 16] [--repeats 3] [--threads 2]

Same model, prompt/completion rows, batch size, max length, steps, learning rate, fp32, CPU,
threads; loss on completion tokens only in both (TRL: completion_only_loss=True), no packing in
either. Contenders:

- alignlab      the `sft` stage at its defaults (length-grouped batches, no gradient checkpointing)
- trl-defaults  SFTTrainer at its defaults (its own random sampler, gradient checkpointing on), fp32
- trl-own       its own random sampler, gradient checkpointing off (what the sampler alone costs)
- trl           fed alignlab's batches in alignlab's order (sequential sampler), checkpointing off:
                identical padded batches, identical work
- trl-best      TRL at its best CPU settings: its own length-grouped sampler
                (train_sampling_strategy="group_by_length"), gradient checkpointing off, fp32
- plain         bench/plain_loop.py on alignlab's batches

Four comparisons are written: sft_defaults (alignlab vs trl-defaults), sft_trl_best (alignlab vs
trl-best), sft_own_sampler (alignlab vs trl-own) and sft_matched (alignlab vs trl, and the plain loop).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def alignlab_child(a) -> dict:
    import alignlab.stages.offline.sft as stage

    cfg = stage.SFTConfig(
        model=str(common.model_dir()), data=str(common.data_file("sft", a.steps * a.batch)),
        max_length=common.SPEC.max_length, max_prompt_length=common.SPEC.max_prompt_length, dtype="float32",
        train=common.alignlab_train_settings(a),
    )
    result = common.run_alignlab_stage(stage, cfg, Path(a.workdir) / "alignlab")
    result["notes"] = "group_by_length=True"
    return result


def trl_child(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    records = common.trl_records("sft", a)
    tokenizer = AutoTokenizer.from_pretrained(common.model_dir())
    model = AutoModelForCausalLM.from_pretrained(common.model_dir(), dtype=torch.float32)
    args = SFTConfig(**common.trl_training_args(a, a.workdir), max_length=common.SPEC.max_length,
                     completion_only_loss=True, packing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer)
    result = common.run_trl(trainer, model)
    result["notes"] = (f"completion_only_loss=True, packing=False, sampler={args.train_sampling_strategy}, "
                       f"gradient_checkpointing={args.gradient_checkpointing}")
    return result


def child(argv: list[str]) -> None:
    common.child_main(common.child_parser("one SFT run").parse_args(argv), alignlab_child, trl_child)


def driver(argv: list[str]) -> None:
    a = common.driver_parser(__doc__.split("\n")[0], batch=16, lr=1e-4).parse_args(argv)
    common.build_model()
    common.data_file("sft", a.steps * a.batch)
    base = ["--steps", str(a.steps), "--batch", str(a.batch), "--lr", str(a.lr)]
    contenders = {
        "alignlab": ("sft.py", base + ["--tool", "alignlab"]),
        "trl-defaults": ("sft.py", base + ["--tool", "trl", "--order", "own", "--gc", "on"]),
        "trl-own": ("sft.py", base + ["--tool", "trl", "--order", "own"]),
        "trl-best": ("sft.py", base + ["--tool", "trl", "--order", "length"]),
        "trl": ("sft.py", base + ["--tool", "trl", "--order", "alignlab"]),
        "plain": ("plain_loop.py", base + ["--tool", "plain", "--job", "sft"]),
    }
    print(f"SFT: {a.steps} steps x {a.batch} rows, {a.repeats} repeats, {a.threads} threads", file=sys.stderr)
    runs = common.alternate(contenders, a.repeats, a.threads)
    common.report_jobs({
        "sft_defaults": ("alignlab", "trl-defaults", "plain"),
        "sft_trl_best": ("alignlab", "trl-best", None),
        "sft_own_sampler": ("alignlab", "trl-own", None),
        "sft_matched": ("alignlab", "trl", "plain"),
    }, "rows", a, runs)


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[1:])
    else:
        driver(sys.argv[1:])
