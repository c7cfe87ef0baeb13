"""DPO: alignlab's `dpo` stage against TRL's DPOTrainer (and the plain PyTorch loop), one command.

    bench/.venv-trl/bin/python bench/dpo.py [--steps 20] [--batch 8] [--repeats 3] [--threads 2]

Same model, pairs, batch size (pairs per step), max length, steps, learning rate, beta, fp32,
CPU, threads. Each run is a fresh process. Contenders:

- alignlab            the `dpo` stage at its defaults: reference log-probs precomputed (and cached
                      on disk) before training, length-grouped batches
- alignlab-live       `ref_mode: live` (a frozen reference copy runs every step)
- trl-defaults        DPOTrainer at its defaults: live reference model, its own random sampler,
                      gradient checkpointing on (fp32, as every run)
- trl-precompute      precompute_ref_log_probs=True (batch 32, as alignlab's), fed alignlab's
                      batches in alignlab's order (sequential sampler): identical work
- trl-live            live reference, fed alignlab's batches: identical work to alignlab-live
- trl-best            TRL at its best CPU settings, as a user would set them: precompute_ref_log_probs=True
                      (batch 32), its own length-grouped sampler (train_sampling_strategy="group_by_length",
                      with the `length` column it needs for preference data), no gradient checkpointing, fp32
- plain               bench/plain_loop.py on alignlab's batches with precomputed reference

Four comparisons are written: dpo_defaults (alignlab vs trl-defaults), dpo_trl_best (alignlab vs
trl-best), dpo_matched (alignlab vs trl-precompute, both precomputing, identical batches),
dpo_live (alignlab-live vs trl-live). `--jobs` picks a subset and `--no-plain` drops the plain loop
(run.sh's 26M row: `--jobs matched --no-plain`).

The headline ratio of every comparison in which either tool precomputes counts that precompute
(alignlab's in dpo_defaults; both tools' in dpo_matched and dpo_trl_best); the train-time-only
ratio is printed after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

BETA = 0.1
PRECOMPUTE_BATCH = 32  # alignlab's reference precompute batch; TRL's is set to match


def alignlab_child(a) -> dict:
    import alignlab.stages.offline.dpo as stage

    cfg = stage.DPOConfig(
        model=str(common.model_dir()), data=str(common.data_file("pairs", a.steps * a.batch)),
        eval_fraction=0.0, beta=BETA, ref_mode=a.ref, max_length=common.SPEC.max_length,
        max_prompt_length=common.SPEC.max_prompt_length, dtype="float32",
        train=common.alignlab_train_settings(a),
    )
    result = common.run_alignlab_stage(stage, cfg, Path(a.workdir) / "alignlab")
    result["notes"] = f"ref_mode={a.ref}, group_by_length=True"
    return result


def trl_child(a) -> dict:
    import time

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    records = common.trl_records("pairs", a)
    dataset = Dataset.from_list(records)
    tokenizer = AutoTokenizer.from_pretrained(common.model_dir())
    model = AutoModelForCausalLM.from_pretrained(common.model_dir(), dtype=torch.float32)

    # TRL precomputes inside DPOTrainer.__init__; time that call on its own
    timing = {"precompute_s": None}
    real_precompute = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return real_precompute(self, *args, **kwargs)
        finally:
            timing["precompute_s"] = (timing["precompute_s"] or 0.0) + time.perf_counter() - start

    DPOTrainer._precompute_ref_logps = timed_precompute
    base = common.trl_training_args(a, a.workdir)
    if a.order == "length":  # keep the `length` column that the length-grouped sampler reads
        base["remove_unused_columns"] = False
    args = DPOConfig(
        **base, beta=BETA, max_length=common.SPEC.max_length,
        precompute_ref_log_probs=a.ref == "precompute",
        precompute_ref_batch_size=PRECOMPUTE_BATCH if a.ref == "precompute" else None,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    if a.order == "length":  # a pair takes prompt + the longer completion in TRL's padded batch
        common.trl_add_lengths(trainer, lambda r: len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])))
    result = common.run_trl(trainer, model)
    result.update(timing)
    result["notes"] = (f"precompute_ref_log_probs={a.ref == 'precompute'}, sampler={args.train_sampling_strategy}, "
                       f"gradient_checkpointing={args.gradient_checkpointing}")
    return result


def child(argv: list[str]) -> None:
    parser = common.child_parser("one DPO run")
    parser.add_argument("--ref", choices=["precompute", "live"], required=True)
    common.child_main(parser.parse_args(argv), alignlab_child, trl_child)


JOBS = {  # comparison -> (alignlab contender, TRL contender, plain loop or None)
    "defaults": ("alignlab", "trl-defaults", "plain"),
    "trl_best": ("alignlab", "trl-best", None),
    "matched": ("alignlab", "trl-precompute", "plain"),
    "live": ("alignlab-live", "trl-live", None),
}


def driver(argv: list[str]) -> None:
    parser = common.driver_parser(__doc__.split("\n")[0], batch=8, lr=5e-5)
    parser.add_argument("--jobs", default=",".join(JOBS),
                        help=f"comma-separated comparisons to run, of {', '.join(JOBS)} (default: all)")
    parser.add_argument("--no-live", action="store_true", help="skip the live-reference comparison")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain PyTorch loop")
    a = parser.parse_args(argv)
    wanted = [j for j in a.jobs.split(",") if j and not (a.no_live and j == "live")]
    unknown = [j for j in wanted if j not in JOBS]
    if unknown or not wanted:
        parser.error(f"--jobs: choose from {', '.join(JOBS)} (got {a.jobs!r})")
    common.build_model()
    common.data_file("pairs", a.steps * a.batch)
    base = ["--steps", str(a.steps), "--batch", str(a.batch), "--lr", str(a.lr)]
    available = {
        "alignlab": ("dpo.py", base + ["--tool", "alignlab", "--ref", "precompute"]),
        "trl-defaults": ("dpo.py", base + ["--tool", "trl", "--ref", "live", "--order", "own", "--gc", "on"]),
        "trl-best": ("dpo.py", base + ["--tool", "trl", "--ref", "precompute", "--order", "length"]),
        "trl-precompute": ("dpo.py", base + ["--tool", "trl", "--ref", "precompute", "--order", "alignlab"]),
        "plain": ("plain_loop.py", base + ["--tool", "plain", "--job", "dpo"]),
        "alignlab-live": ("dpo.py", base + ["--tool", "alignlab", "--ref", "live"]),
        "trl-live": ("dpo.py", base + ["--tool", "trl", "--ref", "live", "--order", "alignlab"]),
    }
    chosen = {j: (ours, theirs, None if a.no_plain else plain) for j, (ours, theirs, plain) in JOBS.items() if j in wanted}
    needed = {name for job in chosen.values() for name in job if name}
    contenders = {name: run for name, run in available.items() if name in needed}
    print(f"DPO ({common.MODEL}): {a.steps} steps x {a.batch} pairs, {a.repeats} repeats, {a.threads} threads, "
          f"contenders {', '.join(contenders)}", file=sys.stderr)
    runs = common.alternate(contenders, a.repeats, a.threads)
    jobs = {f"dpo_{j}": job for j, job in chosen.items()}
    common.report_jobs(jobs, "pairs", a, runs, {"beta": BETA})


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[1:])
    else:
        driver(sys.argv[1:])
