"""Online RL: alignlab's GRPO and RLOO stages against TRL's GRPOTrainer and RLOOTrainer, one command.

    bench/.venv-trl/bin/python bench/rl.py [--steps 15] [--prompts 16] [--k 4] [--repeats 3] [--threads 2]

The job is the same for both tools. It uses the bench's tiny GPT-2 and review openings as prompts
(`common.prompts_file`). The reward is `letter_e_percent`, defined below: the percentage of the
completion's characters that are the letter "e". It is cheap, pure Python, and a random model
can learn to raise it. Each optimizer step samples k completions for each of `--prompts`
prompts, at most 32 new tokens, temperature 1, no top-k or top-p. It then makes exactly one
on-policy optimizer step on all of them (TRL: steps_per_generation 1, num_iterations 1;
alignlab: update_epochs 1, minibatch = every sample). Both tools get the same prompts at every
step: TRL is fed them in the order alignlab's prompt stream draws them, with
shuffle_dataset=False. The completions differ, because each tool seeds its own sampling.

The learning rate (default 3e-3, constant, AdamW, no warmup, clip 1.0, fp32) is higher than an
LLM would use. At 1e-4 the reward of this random model barely moves in 15 steps (alignlab GRPO:
first 3 steps 9.97, last 3 steps 10.5). At 1e-3 it rises to 13.8, and at 3e-3 to about 25–30,
so the "same reward going up" check has a signal well above the sampling noise.

- GRPO: β 0.04 (k3 KL to a frozen reference in the loss), std-scaled group advantages, clip 0.2,
  and the per-sequence mean of the token losses (TRL loss_type "grpo" = alignlab
  "sequence_mean"). TRL's default multiplies the KL term by the importance ratio
  (use_bias_correction_kl). That changes the gradient even on-policy, and alignlab has no such
  term, so it is switched off.
- RLOO: β 0.05, with the sequence's summed k1 KL subtracted from the reward in both tools, and a
  leave-one-out baseline without normalisation. TRL clips the sequence-level ratio exp(Σ log π −
  Σ log π_old), while alignlab clips per token and sums over the sequence ("sequence_sum"). With
  one on-policy step every ratio is 1, so both gradients are −A·Σ_t ∇log π_t, averaged over the
  samples. Only the logged loss values differ: −A per sample in TRL, −A·length in alignlab. TRL
  takes the KL from an extra no-grad forward of the policy (its "old" log-probs, always computed
  in TRL 1.16). alignlab takes it from the sampler's log-probs of the same weights, which agree
  up to float rounding, and skips that pass.

What is timed (as in the other jobs): alignlab, the stage's call of its online loop
(`run_online`: optimizer set-up, every collect→update iteration, the per-step log line, the
end-of-training checkpoint it always writes); TRL, `trainer.train()`. Model loading, tokenization
and the reference model's construction lie outside both. samples/s = steps × completions per step
÷ that time. `rollout` is the sampling, the reward and the reference (and, in TRL's RLOO, the old
policy) log-prob passes (alignlab's `collect`, timed by the loop itself; TRL's
`_generate_and_score_completions`, timed here); `update` is the rest of the step.

TRL at its best CPU settings is the plain `trl-{grpo,rloo}` contender: fp32, no gradient
checkpointing (its configs' default is on: the `trl-*-gc` contenders), the dynamic KV cache
(a static one gave nothing on this CPU). TRL's length-grouped sampler does not apply here: its
GRPO and RLOO trainers draw prompts with their own RepeatSampler, and almost every completion
runs to the full 32 tokens anyway. So the comparisons rl_grpo and rl_rloo are both "same prompts,
same settings" and "TRL at its best"; the table's summary says so.

`--profile DIR` (child runs only) writes a cProfile of the timed part; it slows Python-heavy
code, so profiled runs are never the timed ones.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

REPO = common.BENCH.parent
REWARD_SPEC = "bench.rl:letter_e_percent"  # how alignlab's `callable` reward term names the function below
MAX_NEW_TOKENS = 32
TEMPERATURE = 1.0
CLIP = 0.2
BETA = {"grpo": 0.04, "rloo": 0.05}
VLLM_MEMORY = 0.3  # the share of the GPU each tool's engine may take (weights, KV cache); the rest trains
TREND_STEPS = 3  # reward trend: mean over the first 3 steps against the last 3


def letter_e_percent(prompts, completions, **_ignored) -> list[float]:
    """The reward of both tools: the percentage of a completion's characters that are the letter "e".

    Percent (0-100) rather than a share (0-1), so that in RLOO, whose advantages are not
    rescaled, differences in reward within a group (a few points) outweigh the KL penalty β·KL
    (β 0.05 × a sequence KL of a few nats); on a 0-1 scale the penalty drowns them and the reward
    stays flat. GRPO divides by the group's std, so the scale does not matter there. An empty
    completion (EOS drawn first) scores 0. TRL passes extra keyword arguments (completion_ids,
    trainer_state, ...), which this reward ignores.
    """
    return [100.0 * text.count("e") / len(text) if text else 0.0 for text in completions]


def prompt_order(a) -> list[str]:
    """The prompts of every step, `a.prompts` per step, in the order alignlab's prompt stream draws them."""
    from alignlab.stages.online.common import PromptStream

    prompts = [r["prompt"] for r in common.read_jsonl(common.prompts_file(a.steps * a.prompts))]
    stream = PromptStream(len(prompts), a.prompts, seed=0)
    return [prompts[i] for step in range(a.steps) for i in stream.indices(step)]


class Profiled:
    """cProfile of one timed call when `--profile DIR` is given, written as DIR/<tool>-<algo>.prof."""

    def __init__(self, a):
        self.path = Path(a.profile) / f"{a.tool}-{a.algo}.prof" if a.profile else None
        self.profiler = None

    def __enter__(self):
        if self.path is not None:
            import cProfile

            self.profiler = cProfile.Profile()
            self.profiler.enable()
        return self

    def __exit__(self, *exc):
        if self.profiler is not None:
            self.profiler.disable()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.profiler.dump_stats(str(self.path))


def alignlab_child(a) -> dict:
    sys.path.insert(0, str(REPO))  # REWARD_SPEC imports bench.rl (bench/ is a namespace package)
    import alignlab.stages.online.policy_gradient as stage
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo
    from alignlab.stages.online.rloo import RLOOConfig, run_rloo
    from alignlab.rollout import SamplingSettings
    from alignlab.train.online import OnlineSettings

    settings = OnlineSettings(
        iterations=a.steps, prompts_per_iteration=a.prompts, update_epochs=1, minibatch_size=a.prompts * a.k,
        lr=a.lr, weight_decay=0.0, schedule=a.schedule, warmup_ratio=0.0, max_grad_norm=1.0, seed=0,
        precision=common.PRECISION, device=common.DEVICE, log_every=1, save_every=None,
    )
    shared = {
        "model": str(common.model_dir()), "prompts": str(common.prompts_file(a.steps * a.prompts)),
        "reward": {"type": "callable", "function": REWARD_SPEC}, "dtype": "float32",
        "max_prompt_length": common.SPEC.max_prompt_length,
        "sampling": SamplingSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, top_k=0, top_p=1.0,
                                     batch_size=a.prompts * a.k, draw=a.draw, cache=a.cache),
        "samples_per_prompt": a.k, "clip_low": CLIP, "beta": BETA[a.algo], "train": settings,
    }
    if a.vllm:  # the engine in this process, the policy's weights handed over before every step
        shared.update(rollout_backend="vllm", vllm={"gpu_memory_utilization": VLLM_MEMORY, "max_model_len": 256,
                                                     **({"dtype": "float32"} if common.DEVICE == "cpu" else {})})
    if a.algo == "grpo":
        cfg = GRPOConfig(**shared, scale_rewards=True, aggregation="sequence_mean")
        run = run_grpo
    else:
        cfg = RLOOConfig(**shared, aggregation="sequence_sum")
        run = run_rloo

    probe, timing = common.Probe(), {}
    real_loop = stage.run_online

    def timed_loop(policy, *args, **kwargs):
        timing["rss_before_train_mb"] = common.rss_mb()
        timing["peak_rss_before_train_mb"] = common.peak_rss_mb()
        probe.attach(policy)
        start = time.perf_counter()
        try:
            with Profiled(a):
                return real_loop(policy, *args, **kwargs)
        finally:
            timing["train_s"] = time.perf_counter() - start
            timing.update(probe.figures(start))
            probe.detach()

    out = Path(a.workdir) / "alignlab"
    stage.run_online = timed_loop
    try:
        run(cfg, out)
    finally:
        stage.run_online = real_loop
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
    log = [r for r in log if "step" in r]
    timing.update({
        "rewards": [r["reward"] for r in log],
        "kl": [r.get("kl") for r in log],
        "losses": [r.get("loss") for r in log],
        "rollout_s": [r["rollout_s"] for r in log],
        "update_s": [r["update_s"] for r in log],
        "response_tokens": [r.get("response_tokens") for r in log],
        "notes": f"{a.algo}: aggregation={cfg.aggregation}, beta={cfg.beta}, optimizer steps per iteration 1, draw={a.draw}, "
                 f"cache={a.cache}",
    })
    return timing


def trl_child(a) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    tokenizer = AutoTokenizer.from_pretrained(common.model_dir())
    model = AutoModelForCausalLM.from_pretrained(common.model_dir(), dtype=torch.float32)
    records = [{"prompt": p} for p in prompt_order(a)]
    base = common.trl_training_args(a, a.workdir)
    # GRPO/RLOO need the prompt column, and draw prompts with their own RepeatSampler
    base.update(lr_scheduler_type=a.schedule, remove_unused_columns=False)
    shared = {
        "num_generations": a.k, "steps_per_generation": 1, "num_iterations": 1,
        "max_completion_length": MAX_NEW_TOKENS, "temperature": TEMPERATURE, "top_k": 0, "top_p": 1.0,
        "beta": BETA[a.algo], "epsilon": CLIP, "disable_dropout": True, "shuffle_dataset": False,
        "log_completions": False, "cache_implementation": "static" if a.cache == "static" else None,
    }
    if a.vllm:  # TRL's colocated engine, given the same share of the GPU
        shared.update(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=VLLM_MEMORY,
                      vllm_max_model_length=256)
    if a.algo == "grpo":
        args = trl.GRPOConfig(**base, **shared, loss_type="grpo", scale_rewards="group", use_bias_correction_kl=False)
        trainer_class = trl.GRPOTrainer
    else:
        args = trl.RLOOConfig(**base, **shared, normalize_advantages=False)
        trainer_class = trl.RLOOTrainer
    trainer = trainer_class(model=model, reward_funcs=letter_e_percent, args=args,
                            train_dataset=Dataset.from_list(records), processing_class=tokenizer)

    per_step: dict[str, list] = {"rewards": [], "kl": [], "response_tokens": [], "rollout_s": []}
    rollout_ends: list[float] = []
    step_ends: list[float] = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                per_step["rewards"].append(float(logs["reward"]))
                per_step["kl"].append(logs.get("kl"))
                per_step["response_tokens"].append(logs.get("completions/mean_length"))

    trainer.add_callback(Recorder())
    real_rollout = trainer._generate_and_score_completions

    def timed_rollout(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real_rollout(*args, **kwargs)
        finally:
            rollout_ends.append(time.perf_counter())
            per_step["rollout_s"].append(rollout_ends[-1] - start)

    trainer._generate_and_score_completions = timed_rollout  # what _prepare_inputs calls once per step
    from torch.optim.optimizer import register_optimizer_step_post_hook

    step_hook = register_optimizer_step_post_hook(lambda *_: step_ends.append(time.perf_counter()))
    real_train = trainer.train

    def profiled_train(*args, **kwargs):
        with Profiled(a):
            return real_train(*args, **kwargs)

    trainer.train = profiled_train
    result = common.run_trl(trainer, model)
    step_hook.remove()
    result.update(per_step)
    # update = from the end of a step's rollout to the end of its optimizer step (loss, backward, clip, step)
    result["update_s"] = [end - ready for ready, end in zip(rollout_ends, step_ends)]
    result["notes"] = (f"{a.algo}: trl {trl.__version__}, "
                       + (f"loss_type={args.loss_type}, scale_rewards={args.scale_rewards}, "
                          f"use_bias_correction_kl={args.use_bias_correction_kl}, " if a.algo == "grpo" else
                          f"normalize_advantages={args.normalize_advantages}, ")
                       + f"beta={args.beta}, generation_batch_size={args.generation_batch_size}, "
                       f"gradient_checkpointing={args.gradient_checkpointing}, "
                       f"cache_implementation={args.cache_implementation}")
    return result


def child(argv: list[str]) -> None:
    parser = common.child_parser("one GRPO/RLOO run")
    parser.add_argument("--algo", choices=["grpo", "rloo"], required=True)
    parser.add_argument("--k", type=int, required=True, help="completions per prompt")
    parser.add_argument("--prompts", type=int, required=True, help="prompts per optimizer step")
    parser.add_argument("--schedule", choices=["constant", "linear"], required=True)
    parser.add_argument("--profile", default=None, help="write a cProfile of the timed part into this folder")
    parser.add_argument("--draw", choices=["inverse_cdf", "multinomial"], default="inverse_cdf",
                        help="alignlab only: how generate draws tokens (sampling.draw; inverse_cdf is its default)")
    parser.add_argument("--cache", choices=["dynamic", "static"], default="dynamic",
                        help="generate's KV cache (alignlab: sampling.cache; TRL: cache_implementation); "
                             "static compiles decoding on a GPU")
    parser.add_argument("--unfused", action="store_true",
                        help="alignlab only: keep transformers' op-by-op gelu_new (ALIGNLAB_FUSED_ACTIVATIONS=0)")
    parser.add_argument("--vllm", action="store_true", help="sample with a colocated vLLM engine (both tools)")
    a = parser.parse_args(argv)
    if a.unfused:
        os.environ["ALIGNLAB_FUSED_ACTIVATIONS"] = "0"  # read when alignlab loads the model
    if a.batch != a.prompts * a.k:
        parser.error(f"--batch must be --prompts × --k = {a.prompts * a.k} (completions per optimizer step)")
    common.child_main(a, alignlab_child, trl_child)


# ---------------------------------------------------------------------------------------------
# The driver


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def rl_summary(runs: list[dict], examples: int) -> dict:
    """`common.summarise` plus what an RL run adds: time split per step and the reward trend.

    Rewards are averaged over the repeats step by step (each repeat is seeded alike, so they
    usually agree); "first"/"last" are means over the first and last TREND_STEPS steps.
    """
    s = common.summarise(runs, examples)
    steps = min(len(r["rewards"]) for r in runs)
    rewards = [_mean(r["rewards"][i] for r in runs) for i in range(steps)]
    n = min(TREND_STEPS, steps)
    update = [statistics.median(r["update_s"]) for r in runs if r.get("update_s")]
    s.update({
        "rewards": rewards,
        "reward_first": _mean(rewards[:n]),
        "reward_last": _mean(rewards[-n:]),
        "reward_first_each_run": [_mean(r["rewards"][:n]) for r in runs],
        "reward_last_each_run": [_mean(r["rewards"][-n:]) for r in runs],
        "rollout_step_s": statistics.median(statistics.median(r["rollout_s"]) for r in runs),
        "update_step_s": statistics.median(update) if update else None,
        "response_tokens": _mean(_mean(r.get("response_tokens") or []) for r in runs),
        "kl_last": _mean(r["kl"][-1] for r in runs if r.get("kl")),
    })
    return s


def rl_comparison(examples: int, ours: dict, theirs: dict, labels: tuple[str, str], extra: dict) -> dict:
    """The saved payload of one RL job: both contenders, the ratios and the warnings."""
    a_label, t_label = labels
    ratio = common.ratio
    fmt = common.fmt
    ratios = [
        (f"samples/s {a_label}/{t_label} = {fmt(ratio(ours['examples_per_s'], theirs['examples_per_s']))} "
         "(median train times; >1: alignlab faster; the issue's target is >= 1.5)"),
        f"steady step time {t_label}/{a_label} = {fmt(ratio(theirs['steady_step_s'], ours['steady_step_s']))}",
        (f"rollout time per step {t_label}/{a_label} = {fmt(ratio(theirs['rollout_step_s'], ours['rollout_step_s']))}; "
         f"update time per step {t_label}/{a_label} = {fmt(ratio(theirs['update_step_s'], ours['update_step_s']))}"),
        f"peak RSS {a_label}/{t_label} = {fmt(ratio(ours['peak_rss_mb'], theirs['peak_rss_mb']))}"
        + (f"; peak GPU memory {fmt(ratio(ours['peak_gpu_mb'], theirs['peak_gpu_mb']))} "
           f"({fmt(ours['peak_gpu_mb'], 0)} vs {fmt(theirs['peak_gpu_mb'], 0)} MiB)" if ours.get("peak_gpu_mb") else ""),
        (f"mean reward, first {TREND_STEPS} → last {TREND_STEPS} steps: "
         f"{a_label} {fmt(ours['reward_first'], 4)} → {fmt(ours['reward_last'], 4)}, "
         f"{t_label} {fmt(theirs['reward_first'], 4)} → {fmt(theirs['reward_last'], 4)}"),
    ]
    warnings = []
    busy = {k: v["max_other_cores"] for k, v in ((a_label, ours), (t_label, theirs)) if v.get("max_other_cores", 0) > 0.25}
    if busy:
        warnings.append("other processes used CPU during some runs (cores, worst run): "
                        + ", ".join(f"{k} {v:.2f}" for k, v in busy.items()) + "; timings are less trustworthy")
    for label, s in ((a_label, ours), (t_label, theirs)):
        if len(s["rewards"]) < 2 * TREND_STEPS:
            warnings.append(f"{label}: {len(s['rewards'])} steps are too few to tell a reward trend")
        elif s["reward_last"] <= s["reward_first"]:
            warnings.append(f"{label}: the reward did not go up over the run")
    headline = {"ours": a_label, "theirs": t_label, "ratio": ratio(ours["examples_per_s"], theirs["examples_per_s"]),
                "basis": "train time", "train_ratio": ratio(ours["examples_per_s"], theirs["examples_per_s"]),
                "steady_ratio": ratio(theirs["steady_step_s"], ours["steady_step_s"]),
                "rss_ratio": ratio(ours["peak_rss_mb"], theirs["peak_rss_mb"])}
    return {"kind": "rl", "unit": "completions", "examples": examples,
            "contenders": {a_label: ours, t_label: theirs}, "ratios": ratios, "warnings": warnings,
            "headline": headline, **extra}


def driver(argv: list[str]) -> None:
    parser = common.driver_parser(__doc__.split("\n")[0], batch=0, lr=3e-3)
    parser.set_defaults(steps=15)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per optimizer step")
    parser.add_argument("--k", type=int, default=4, help="completions per prompt")
    parser.add_argument("--schedule", choices=["constant", "linear"], default="constant")
    parser.add_argument("--algos", default="grpo,rloo", help="comma-separated: grpo, rloo")
    parser.add_argument("--multinomial", action="store_true",
                        help="add alignlab runs that draw with torch.multinomial, as transformers and TRL do "
                             "(sampling.draw: multinomial; alignlab's default is inverse_cdf)")
    parser.add_argument("--static-cache", action="store_true",
                        help="add alignlab and TRL runs with a static KV cache (compiled decoding on a GPU)")
    parser.add_argument("--no-trl-gc", action="store_true",
                        help="skip the TRL runs with gradient checkpointing on (its configs' default)")
    parser.add_argument("--unfused", action="store_true",
                        help="add alignlab runs with transformers' op-by-op gelu_new, as TRL runs it "
                             "(alignlab's loaders fuse it into one kernel by default)")
    parser.add_argument("--vllm", action="store_true",
                        help="add alignlab and TRL runs that sample with a colocated vLLM engine (needs vllm installed)")
    a = parser.parse_args(argv)
    a.batch = a.prompts * a.k
    algos = [x for x in a.algos.split(",") if x]
    common.build_model()
    common.prompts_file(a.steps * a.prompts)
    base = ["--steps", str(a.steps), "--batch", str(a.batch), "--lr", str(a.lr), "--k", str(a.k),
            "--prompts", str(a.prompts), "--schedule", a.schedule]
    contenders = {}
    for algo in algos:
        contenders[f"alignlab-{algo}"] = ("rl.py", base + ["--tool", "alignlab", "--algo", algo])
        contenders[f"trl-{algo}"] = ("rl.py", base + ["--tool", "trl", "--algo", algo])
        if a.multinomial:
            contenders[f"alignlab-{algo}-multinomial"] = ("rl.py", base + ["--tool", "alignlab", "--algo", algo,
                                                                          "--draw", "multinomial"])
        if a.static_cache:
            for tool in ("alignlab", "trl"):
                contenders[f"{tool}-{algo}-static"] = ("rl.py", base + ["--tool", tool, "--algo", algo,
                                                                       "--cache", "static"])
        if a.unfused:
            contenders[f"alignlab-{algo}-unfused"] = ("rl.py", base + ["--tool", "alignlab", "--algo", algo,
                                                                      "--unfused"])
        if a.vllm:
            for tool in ("alignlab", "trl"):
                contenders[f"{tool}-{algo}-vllm"] = ("rl.py", base + ["--tool", tool, "--algo", algo, "--vllm"])
        if not a.no_trl_gc:
            contenders[f"trl-{algo}-gc"] = ("rl.py", base + ["--tool", "trl", "--algo", algo, "--gc", "on"])
    print(f"RL: {a.steps} steps x {a.prompts} prompts x {a.k} samples, {a.repeats} repeats, {a.threads} threads",
          file=sys.stderr)
    runs = common.alternate(contenders, a.repeats, a.threads)
    examples = a.steps * a.batch
    extra = {"machine": common.machine(), "model": common.model_line(), "runs": runs,
             "settings": {**vars(a), "max_new_tokens": MAX_NEW_TOKENS, "temperature": TEMPERATURE, "clip": CLIP,
                          "beta": BETA, "reward": REWARD_SPEC, "spec": common.SPEC.__dict__}}
    comparisons = [(f"rl_{algo}", f"alignlab-{algo}", f"trl-{algo}") for algo in algos]
    if not a.no_trl_gc:  # TRL with its configs' default gradient checkpointing
        comparisons += [(f"rl_{algo}_trl_gc", f"alignlab-{algo}", f"trl-{algo}-gc") for algo in algos]
    if a.multinomial:  # alignlab drawing tokens as transformers does, against plain TRL
        comparisons += [(f"rl_{algo}_multinomial", f"alignlab-{algo}-multinomial", f"trl-{algo}") for algo in algos]
    if a.unfused:  # alignlab with the model's activation as transformers runs it, against plain TRL
        comparisons += [(f"rl_{algo}_unfused", f"alignlab-{algo}-unfused", f"trl-{algo}") for algo in algos]
    if a.static_cache:  # decoding with a static, compiled KV cache: alignlab against plain TRL, and both with it
        comparisons += [(f"rl_{algo}_static_cache", f"alignlab-{algo}-static", f"trl-{algo}") for algo in algos]
        comparisons += [(f"rl_{algo}_static_both", f"alignlab-{algo}-static", f"trl-{algo}-static") for algo in algos]
    if a.vllm:  # both sampling with vLLM; and alignlab with vLLM against TRL without
        comparisons += [(f"rl_{algo}_vllm_both", f"alignlab-{algo}-vllm", f"trl-{algo}-vllm") for algo in algos]
        comparisons += [(f"rl_{algo}_vllm", f"alignlab-{algo}-vllm", f"trl-{algo}") for algo in algos]
    for name, ours, theirs in comparisons:
        name = common.job_name(name)
        payload = rl_comparison(examples, rl_summary(runs[ours], examples),
                                rl_summary(runs[theirs], examples), (ours, theirs), extra)
        common.save_json(name, payload)
        print("\n".join(common.RL_TABLE_HEAD + common.rl_table_rows(name, payload)))
        for line in payload["ratios"] + [f"WARNING: {w}" for w in payload["warnings"]]:
            print(f"- {line}")
        print()


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[1:])
    else:
        driver(sys.argv[1:])
