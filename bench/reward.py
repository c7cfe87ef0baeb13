"""Reward modelling: alignlab's `reward_model` stage against TRL's RewardTrainer, one command.

    bench/.venv-trl/bin/python bench/reward.py [--steps 20] [--batch 8] [--repeats 3] [--threads 2]

Same backbone and freshly initialised one-output head (both load it with
`alignlab.models.load_reward_model`, so the starting weights are identical), same pairs, batch
size (pairs per step), max length, steps, learning rate, fp32, CPU, threads; Bradley-Terry loss,
no margin, no reward centring. Contenders, as in bench/sft.py:

- alignlab      the `reward_model` stage at its defaults (length-grouped pairs, no checkpointing)
- trl-defaults  RewardTrainer at its defaults (its own random sampler, gradient checkpointing on), fp32
- trl-own       its own random sampler, gradient checkpointing off
- trl           fed alignlab's batches in alignlab's order, checkpointing off: identical work
- trl-best      TRL at its best CPU settings: its own length-grouped sampler
                (train_sampling_strategy="group_by_length", with the `length` column it needs for
                pairs), checkpointing off, fp32

Comparisons written: reward_defaults, reward_trl_best, reward_own_sampler, reward_matched.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def alignlab_child(a) -> dict:
    import alignlab.stages.offline.reward_model as stage

    cfg = stage.RewardModelConfig(
        model=str(common.model_dir()), data=str(common.data_file("pairs", a.steps * a.batch)), eval_fraction=0.0,
        max_length=common.SPEC.max_length, max_prompt_length=common.SPEC.max_prompt_length, dtype="float32",
        train=common.alignlab_train_settings(a),
    )
    result = common.run_alignlab_stage(stage, cfg, Path(a.workdir) / "alignlab")
    result["notes"] = "group_by_length=True"
    return result


def trl_child(a) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from alignlab.models import load_reward_model

    records = common.trl_records("pairs", a)
    tokenizer = AutoTokenizer.from_pretrained(common.model_dir())
    model = load_reward_model(common.model_dir(), tokenizer=tokenizer, dtype="float32")
    base = common.trl_training_args(a, a.workdir)
    if a.order == "length":  # keep the `length` column that the length-grouped sampler reads
        base["remove_unused_columns"] = False
    args = RewardConfig(**base, max_length=common.SPEC.max_length)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer)
    if a.order == "length":  # chosen and rejected rows are padded to one width in TRL's batch
        common.trl_add_lengths(trainer, lambda r: max(len(r["chosen_ids"]), len(r["rejected_ids"])))
    result = common.run_trl(trainer, model)
    result["notes"] = f"sampler={args.train_sampling_strategy}, gradient_checkpointing={args.gradient_checkpointing}"
    return result


def child(argv: list[str]) -> None:
    common.child_main(common.child_parser("one reward-model run").parse_args(argv), alignlab_child, trl_child)


def driver(argv: list[str]) -> None:
    a = common.driver_parser(__doc__.split("\n")[0], batch=8, lr=1e-4).parse_args(argv)
    common.build_model()
    common.data_file("pairs", a.steps * a.batch)
    base = ["--steps", str(a.steps), "--batch", str(a.batch), "--lr", str(a.lr)]
    contenders = {
        "alignlab": ("reward.py", base + ["--tool", "alignlab"]),
        "trl-defaults": ("reward.py", base + ["--tool", "trl", "--order", "own", "--gc", "on"]),
        "trl-own": ("reward.py", base + ["--tool", "trl", "--order", "own"]),
        "trl-best": ("reward.py", base + ["--tool", "trl", "--order", "length"]),
        "trl": ("reward.py", base + ["--tool", "trl", "--order", "alignlab"]),
    }
    print(f"Reward model: {a.steps} steps x {a.batch} pairs, {a.repeats} repeats, {a.threads} threads", file=sys.stderr)
    runs = common.alternate(contenders, a.repeats, a.threads)
    common.report_jobs({
        "reward_defaults": ("alignlab", "trl-defaults", None),
        "reward_trl_best": ("alignlab", "trl-best", None),
        "reward_own_sampler": ("alignlab", "trl-own", None),
        "reward_matched": ("alignlab", "trl", None),
    }, "pairs", a, runs)


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[1:])
    else:
        driver(sys.argv[1:])
