"""What every benchmark shares: the assets, the measuring probes inside a run, and the driver.

Assets (built once, deterministically, under bench/out/assets/): a byte-level BPE tokenizer and a
randomly initialised GPT-2 (hidden 256, 4 layers, 4 heads), trained/built offline with
`alignlab.models.build`, and JSONL data made from the built-in sentiment task's synthetic
reviews: SFT prompt/completion rows and prompt/chosen/rejected pairs (chosen = the continuation
VADER scores higher). Every row fits `max_length` (BOS + prompt + completion + EOS), so no tool
truncates or drops anything and both see exactly the same tokens.

The tokenizer's post-processor prepends BOS, as Llama-style tokenizers do: TRL tokenizes with
special tokens and so gets the BOS from it, while alignlab tokenizes without them and prepends the
BOS itself. Both therefore build identical rows; each run counts the real tokens its policy saw,
and the driver flags any difference.

A run ("child") is one tool doing one job in a fresh process: `python bench/X.py child ...`. It
writes one JSON result. The driver runs the contenders alternately, several times, and reports
medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"


@dataclass(frozen=True)
class Spec:
    """The model and data every benchmark uses (changing it rebuilds the assets)."""

    vocab_size: int = 2048  # the corpus has fewer distinct pieces; the tokenizer ends near 1.8k
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 256
    max_length: int = 128
    max_prompt_length: int = 32
    seed: int = 0


# The machine a run uses, chosen by environment variables that the driver's children inherit:
#   BENCH_MODEL      tiny (default: the CPU job above, 3.70M parameters), gpt2-25m (hidden 512, 8
#                    layers, 8 heads: ~26M parameters with this vocabulary, the CPU scaling row of
#                    run.sh) or gpt2-small (hidden 768, 12 layers, 12 heads: ~86M parameters, a size
#                    a GPU is worth using for)
#   BENCH_DEVICE     cpu (default) or cuda, for both tools
#   BENCH_PRECISION  fp32 (default) or bf16 (autocast in both tools; weights stay fp32)
MODELS = {"tiny": Spec(), "gpt2-25m": Spec(hidden_size=512, num_layers=8, num_heads=8),
          "gpt2-small": Spec(hidden_size=768, num_layers=12, num_heads=12)}
MODEL = os.environ.get("BENCH_MODEL", "tiny")
if MODEL not in MODELS:
    raise SystemExit(f"BENCH_MODEL={MODEL!r}: choose one of {', '.join(MODELS)}")
SPEC = MODELS[MODEL]
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
PRECISION = os.environ.get("BENCH_PRECISION", "fp32")
if DEVICE not in ("cpu", "cuda") or PRECISION not in ("fp32", "bf16"):
    raise SystemExit(f"BENCH_DEVICE={DEVICE!r} / BENCH_PRECISION={PRECISION!r}: cpu|cuda and fp32|bf16")
# each model gets its own assets (tokenizer, weights, data), so switching never rebuilds the other's
ASSETS = OUT / "assets" if MODEL == "tiny" else OUT / f"assets-{MODEL}"


# ---------------------------------------------------------------------------------------------
# Assets


def model_dir() -> Path:
    return ASSETS / "model"


def build_model(spec: Spec = SPEC) -> Path:
    """Tokenizer + random GPT-2 saved in HF format under assets/model (kept if already built)."""
    target = model_dir()
    stamp = ASSETS / "spec.json"
    if target.is_dir() and stamp.exists() and json.loads(stamp.read_text()) == asdict(spec):
        return target
    from tokenizers.processors import TemplateProcessing

    from alignlab.models.build import new_causal_lm, train_bpe_tokenizer
    from alignlab.tasks.sentiment import SentimentTask

    tokenizer = train_bpe_tokenizer(SentimentTask().corpus(3000, spec.seed), spec.vocab_size)
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    tokenizer.model_max_length = spec.max_positions
    model = new_causal_lm(tokenizer, "gpt2", spec.hidden_size, spec.num_layers, spec.num_heads,
                          spec.max_positions, seed=spec.seed)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    stamp.write_text(json.dumps(asdict(spec)))
    for old in ASSETS.glob("*.jsonl"):  # data depends on the tokenizer: rebuild it too
        old.unlink()
    return target


def param_count(spec: Spec = SPEC) -> int:
    """Parameters of the bench's model (tied embedding and LM head counted once), built if missing."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_model(spec), dtype=torch.float32)
    return sum(p.numel() for p in model.parameters())


def model_line() -> str:
    """The model in words, with its parameter count: what the table prints for each model size."""
    return (f"{MODEL}: GPT-2, hidden {SPEC.hidden_size}, {SPEC.num_layers} layers, {SPEC.num_heads} heads, "
            f"{param_count() / 1e6:.2f}M parameters")


def job_name(name: str) -> str:
    """A comparison's file and table name: the model size is appended unless it is the default tiny model,
    so a scaling run never overwrites the default one's results."""
    return name if MODEL == "tiny" else f"{name}-{MODEL}"


def _row_length(tokenizer, prompt: str, completion: str) -> int:
    """Tokens of BOS + prompt + completion + EOS, as both tools build the row."""
    ids = tokenizer([prompt, completion], add_special_tokens=False)["input_ids"]
    return 2 + len(ids[0]) + len(ids[1])


def _fit(tokenizer, prompt: str, pieces: list[str], max_length: int) -> str:
    """The longest prefix of `pieces` (whole reviews) whose row still fits `max_length`."""
    while len(pieces) > 1 and _row_length(tokenizer, prompt, "".join(pieces)) > max_length:
        pieces = pieces[:-1]
    text = "".join(pieces)
    if _row_length(tokenizer, prompt, text) > max_length:
        raise ValueError("a single review does not fit max_length; raise Spec.max_length")
    return text


def _continuations(n: int, seed: int, tokenizer, spec: Spec) -> list[tuple[str, str]]:
    """`n` (prompt, completion) pairs: a review cut after 2-8 words, continued by 0-3 more reviews,
    so rows range from ~15 to `max_length` tokens (realistic padding inside a batch)."""
    import random

    from alignlab.tasks.sentiment import SentimentTask

    task = SentimentTask()
    heads = task.sft_examples(n, seed)
    extra = task.corpus(3 * n, seed + 1)
    rng = random.Random(seed)
    out = []
    for i, ex in enumerate(heads):
        pieces = [ex["completion"]] + [" " + r for r in extra[3 * i : 3 * i + rng.randint(0, 3)]]
        out.append((ex["prompt"], _fit(tokenizer, ex["prompt"], pieces, spec.max_length)))
    return out


def data_file(kind: str, n: int, spec: Spec = SPEC) -> Path:
    """assets/{kind}-{n}.jsonl with `n` rows: kind "sft" (prompt/completion) or "pairs"
    (prompt/chosen/rejected). Deterministic; built on first use."""
    path = ASSETS / f"{kind}-{n}.jsonl"
    if path.exists():
        return path
    from transformers import AutoTokenizer

    from alignlab.tasks.sentiment import SentimentTask

    tokenizer = AutoTokenizer.from_pretrained(build_model(spec))
    if kind == "sft":
        rows = [{"prompt": p, "completion": c} for p, c in _continuations(n, spec.seed + 10, tokenizer, spec)]
    elif kind == "pairs":
        first = _continuations(n, spec.seed + 20, tokenizer, spec)
        # the second response continues the same prompt with another review's ending
        second = _continuations(n, spec.seed + 30, tokenizer, spec)
        gold = SentimentTask().gold_reward
        rows = []
        for (prompt, a), (_, b) in zip(first, second):
            b = _fit(tokenizer, prompt, [b], spec.max_length)
            sa, sb = gold([prompt, prompt], [a, b])
            chosen, rejected = (a, b) if sa >= sb else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    else:
        raise ValueError(f"unknown data kind {kind!r}")
    ASSETS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


def prompts_file(n: int, spec: Spec = SPEC) -> Path:
    """assets/prompts-{n}.jsonl: `n` review openings of 2-8 words ({"prompt": ...}), the sentiment
    task's training prompts, for the online RL jobs. Deterministic; built on first use."""
    path = ASSETS / f"prompts-{n}.jsonl"
    if path.exists():
        return path
    from alignlab.tasks.sentiment import SentimentTask

    rows = [{"prompt": p} for p in SentimentTask().prompts("train", n, spec.seed + 40)]
    ASSETS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def alignlab_batches(kind: str, path: Path, batch_size: int, seed: int, group_by_length: bool) -> list[list[int]]:
    """The example indices of each of alignlab's first-epoch batches, computed with alignlab's own
    tokenization and batch sampler (what `alignlab.train.loop.train` draws for epoch 0)."""
    from alignlab.data.collate import length_grouped_batches
    from alignlab.data.formats import load_preferences, load_sft
    from alignlab.data.tokenize import tokenize_preferences, tokenize_sft
    from alignlab.models import load_tokenizer
    from alignlab.stages.offline.pairs import pair_lengths

    tokenizer = load_tokenizer(model_dir())
    if kind == "sft":
        rows, _ = tokenize_sft(load_sft(path), tokenizer, SPEC.max_length, SPEC.max_prompt_length)
        lengths = [len(r) for r in rows]
    else:
        pairs, _ = tokenize_preferences(load_preferences(path), tokenizer, SPEC.max_length, SPEC.max_prompt_length)
        lengths = pair_lengths(pairs)
    return length_grouped_batches(lengths, batch_size, seed=seed, epoch=0, shuffle=True,
                                  group_multiplier=32 if group_by_length else 1)


# ---------------------------------------------------------------------------------------------
# Inside a run


def child_setup(threads: int) -> None:
    """Same threads for every tool; no hub access; quiet progress bars."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")


def rss_mb() -> float:
    """Current resident set size of this process (MiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """High-water resident set size of this process so far (MiB; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Probe:
    """Counts what the policy model computes and when each optimizer step ends.

    A forward pre-hook on the policy records rows, padded positions (input_ids.numel()) and real
    tokens (attention_mask.sum()) of every training forward; a global optimizer post-hook records
    the end time of every optimizer step, whatever the tool's optimizer class.
    """

    def __init__(self):
        self.forwards = 0
        self.rows = 0
        self.padded_tokens = 0
        self.real_tokens = 0
        self.step_ends: list[float] = []
        self.optimizer = ""
        self._handles = []

    def attach(self, model) -> "Probe":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def on_forward(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            if ids is None:
                return
            self.forwards += 1
            self.rows += ids.shape[0]
            self.padded_tokens += ids.numel()
            self.real_tokens += int(mask.sum()) if mask is not None else ids.numel()

        def on_step(optimizer, _args, _kwargs):
            self.step_ends.append(time.perf_counter())
            if not self.optimizer:
                d = optimizer.defaults
                self.optimizer = f"{type(optimizer).__name__}(fused={d.get('fused')}, foreach={d.get('foreach')})"

        self._handles.append(model.register_forward_pre_hook(on_forward, with_kwargs=True))
        self._handles.append(register_optimizer_step_post_hook(on_step))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def figures(self, start: float) -> dict:
        ends = self.step_ends
        gaps = [b - a for a, b in zip(ends, ends[1:])]
        return {
            "optimizer_steps": len(ends),
            "optimizer": self.optimizer,
            "forwards": self.forwards,
            "rows": self.rows,
            "padded_tokens": self.padded_tokens,
            "real_tokens": self.real_tokens,
            "first_step_s": (ends[0] - start) if ends else None,
            # median time of one step once running: excludes the first step and any fixed set-up
            "steady_step_s": statistics.median(gaps) if gaps else None,
        }


def child_parser(description: str):
    """Arguments every child run takes (the driver passes the first three)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("role", choices=["child"])
    parser.add_argument("--result", required=True, help="where to write the JSON result")
    parser.add_argument("--workdir", required=True, help="scratch directory of this run")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--order", choices=["alignlab", "own", "length"], default="alignlab",
                        help="TRL only: feed alignlab's batches in order (sequential sampler), TRL's own random "
                             "sampler, or TRL's own length-grouped sampler (train_sampling_strategy='group_by_length')")
    parser.add_argument("--gc", choices=["on", "off"], default="off",
                        help="TRL only: gradient checkpointing (TRL's configs default it to on)")
    return parser


def losses_from_log(log_path: Path) -> list[float]:
    """Per-step training losses from an alignlab stage's log.jsonl."""
    rows = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    return [r["loss"] for r in rows if "loss" in r and "step" in r]


def run_alignlab_stage(stage, cfg, out: Path) -> dict:
    """Run an alignlab stage (`stage.run(cfg, out)`) with its call of the training loop timed.

    The stage module's `train` (alignlab.train.train) is wrapped: the clock starts when the stage
    calls it and stops when it returns, so tokenization, model loading, reference precompute and
    the final model save lie outside; the loop's own set-up, its per-step log and progress, and the
    end-of-training checkpoint it always writes lie inside. When the stage has a
    `_cached_reference` (DPO precompute), that call is timed separately as the precompute.
    """
    probe = Probe()
    timing: dict = {}
    real_train = stage.train

    def timed_train(model, *args, **kwargs):
        timing["rss_before_train_mb"] = rss_mb()
        timing["peak_rss_before_train_mb"] = peak_rss_mb()
        probe.attach(model)
        start = time.perf_counter()
        try:
            return real_train(model, *args, **kwargs)
        finally:
            timing["train_s"] = time.perf_counter() - start
            timing.update(probe.figures(start))
            probe.detach()

    stage.train = timed_train
    real_reference = getattr(stage, "_cached_reference", None)
    if real_reference is not None:
        def timed_reference(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real_reference(*args, **kwargs)
            finally:
                timing["precompute_s"] = time.perf_counter() - start

        stage._cached_reference = timed_reference
    try:
        stage.run(cfg, out)
    finally:
        stage.train = real_train
        if real_reference is not None:
            stage._cached_reference = real_reference
    losses = losses_from_log(out / "log.jsonl")
    timing.update({"losses": losses, "loss_first": losses[0], "loss_last": losses[-1]})
    return timing


def alignlab_train_settings(a, group_by_length: bool = True):
    """The alignlab TrainSettings of a run: no warmup, linear decay, clip 1.0, no periodic
    checkpoints (save_every None) and no evaluation, a log line every step."""
    from alignlab.train import TrainSettings

    return TrainSettings(lr=a.lr, batch_size=a.batch, max_steps=a.steps, warmup_ratio=0.0, schedule="linear",
                         max_grad_norm=1.0, weight_decay=0.0, seed=0, device=DEVICE, precision=PRECISION,
                         log_every=1, eval_every=None, save_every=None, group_by_length=group_by_length)


def trl_training_args(a, workdir: str) -> dict:
    """TrainingArguments shared by the TRL runs, matched to alignlab's settings.

    Set against TRL's defaults: BENCH_PRECISION for both (fp32 unless set; TRL's configs default
    to bf16=True, and the issue fixes one precision for both), BENCH_DEVICE, no warmup, linear
    decay, clip 1.0, weight decay 0, no saving, no
    evaluation, no reporting, a log line every step. Gradient checkpointing follows `--gc`: on in
    the "defaults" runs (TRL's configs default to it), off in the matched ones (alignlab's default
    is off; it trades about one extra forward for memory). The optimizer is left at the
    transformers default ("adamw_torch_fused").
    """
    return dict(
        output_dir=str(Path(workdir) / "trl"), per_device_train_batch_size=a.batch, max_steps=a.steps,
        learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
        bf16=PRECISION == "bf16", fp16=False, gradient_checkpointing=a.gc == "on", use_cpu=DEVICE == "cpu",
        seed=0, data_seed=0,
        report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, remove_unused_columns=True,
        train_sampling_strategy=SAMPLERS[a.order],
    )


# --order of a TRL run -> its train_sampling_strategy ("length": its own LengthGroupedSampler)
SAMPLERS = {"alignlab": "sequential", "own": "random", "length": "group_by_length"}


def trl_add_lengths(trainer, length) -> None:
    """Give the trainer's tokenized train set the `length` column that TRL's length-grouped sampler
    reads (`length(row)`: the padded width the row takes in a batch).

    transformers' LengthGroupedSampler infers lengths only from an `input_ids` column. TRL's DPO and
    reward datasets hold `prompt_ids`/`chosen_ids`/`rejected_ids` instead, so with
    train_sampling_strategy="group_by_length" and nothing else they stop with "Can only automatically
    infer lengths ...". A TRL user gets length grouping for them as done here: add a `length`
    column (transformers' `length_column_name`) and keep it past the column filter with
    `remove_unused_columns=False` (the preference collators read only the keys they need)."""
    ds = trainer.train_dataset
    rows = ds.select_columns([c for c in ("prompt_ids", "chosen_ids", "rejected_ids") if c in ds.column_names])
    trainer.train_dataset = ds.add_column("length", [length(r) for r in rows])


def in_order(records: list[dict], batches: list[list[int]]) -> list[dict]:
    """The records laid out in the order of `batches`, for a sequential sampler."""
    return [records[i] for batch in batches for i in batch]


def run_trl(trainer, model) -> dict:
    """Time `trainer.train()` (nothing subtracted) with the probe on `model`; collect losses."""
    from transformers import TrainerCallback

    losses: list[float] = []

    class LossRecorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer.add_callback(LossRecorder())
    probe = Probe()
    result = {"rss_before_train_mb": rss_mb(), "peak_rss_before_train_mb": peak_rss_mb()}
    probe.attach(model)
    start = time.perf_counter()
    trainer.train()
    result["train_s"] = time.perf_counter() - start
    result.update(probe.figures(start))
    probe.detach()
    result.update({"losses": losses, "loss_first": losses[0] if losses else None,
                   "loss_last": losses[-1] if losses else None})
    return result


def write_result(path: str, result: dict) -> None:
    result.setdefault("peak_rss_mb", peak_rss_mb())
    if DEVICE == "cuda":
        import torch

        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(path).write_text(json.dumps(result, indent=1, default=float))


# ---------------------------------------------------------------------------------------------
# The driver


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(script: str, args: list[str], threads: int, timeout: float = 900) -> dict:
    """Run `python bench/<script> child <args>` in a fresh process; return its JSON result."""
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TQDM_DISABLE": "1", "CI": "true", "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore",
    })
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        # a fresh HF datasets cache per run: TRL caches precomputed reference log-probs there
        env["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf-datasets")
        cmd = [sys.executable, str(BENCH / script), "child", "--result", str(result_path),
               "--workdir", tmp, "--threads", str(threads), *args]
        busy, mine, wall = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        busy, mine, wall = _busy_cpu_s() - busy, _children_cpu_s() - mine, time.perf_counter() - wall
        if proc.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        result = json.loads(result_path.read_text())
        # CPU the rest of the machine used meanwhile, in cores: a busy neighbour skews the timings
        result["other_cores"] = max(0.0, busy - mine) / wall
        result["process_s"] = wall
        return result


def wait_for_quiet(max_wait: float = 180.0, threshold: float = 0.3) -> float:
    """Wait (up to `max_wait` s) until the rest of the machine uses under `threshold` cores,
    measured over 2 s; returns what it last measured. A shared machine is no benchmark machine,
    but this keeps a neighbour's test run from landing in the middle of one contender's runs."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = _busy_cpu_s()
        time.sleep(2.0)
        load = (_busy_cpu_s() - busy) / 2.0
        if load < threshold or time.monotonic() > deadline:
            return load
        print(f"  waiting: other processes use {load:.2f} cores", file=sys.stderr, flush=True)
        time.sleep(5.0)


def alternate(contenders: dict[str, tuple[str, list[str]]], repeats: int, threads: int) -> dict[str, list[dict]]:
    """Run every contender `repeats` times, interleaved (A B C, C B A, A B C, ...) so slow drift of
    the machine hits all of them alike. Returns each contender's list of results."""
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    names = list(contenders)
    for rep in range(repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            script, args = contenders[name]
            wait_for_quiet(float(os.environ.get("BENCH_QUIET_WAIT", "180")))
            t0 = time.perf_counter()
            result = run_child(script, args, threads)
            print(f"  [{rep + 1}/{repeats}] {name}: train {result['train_s']:.2f} s "
                  f"(process {time.perf_counter() - t0:.1f} s, other processes used "
                  f"{result['other_cores']:.2f} cores)", file=sys.stderr, flush=True)
            runs[name].append(result)
    return runs


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict], examples: int) -> dict:
    """Medians over the repeats of one contender (plus the values of its first run that do not
    vary between repeats: losses and token counts)."""
    train_s = median_of(runs, "train_s")
    pre = median_of(runs, "precompute_s")
    first = runs[0]
    return {
        "repeats": len(runs),
        "train_s": train_s,
        "train_s_all": [r["train_s"] for r in runs],
        "precompute_s": pre,
        "examples_per_s": examples / train_s,
        "examples_per_s_with_precompute": examples / (train_s + (pre or 0.0)),
        "steady_step_s": median_of(runs, "steady_step_s"),
        "first_step_s": median_of(runs, "first_step_s"),
        "peak_rss_mb": median_of(runs, "peak_rss_mb"),
        "peak_gpu_mb": median_of(runs, "peak_gpu_mb"),
        "rss_before_train_mb": median_of(runs, "rss_before_train_mb"),
        "padded_tokens": first.get("padded_tokens"),
        "real_tokens": first.get("real_tokens"),
        "padded_tokens_per_s": first.get("padded_tokens", 0) / train_s,
        "loss_first": first.get("loss_first"),
        "loss_last": first.get("loss_last"),
        "losses": first.get("losses"),
        "optimizer_steps": first.get("optimizer_steps"),
        "optimizer": first.get("optimizer"),
        "max_other_cores": max(r.get("other_cores", 0.0) for r in runs),
        "notes": first.get("notes", ""),
        "settings": first.get("settings", {}),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _precompute_words(label: str, s: dict) -> str:
    pre = s.get("precompute_s")
    return f"{label} precompute {pre:.2f} s" if pre else f"{label} no precompute"


def comparison(name: str, unit: str, examples: int, contenders: dict, ours: str, theirs: str,
               plain: str | None, extra: dict) -> dict:
    s = {k: contenders[k] for k in ([ours, theirs] + ([plain] if plain else []))}
    a, t = s[ours], s[theirs]
    train_ratio = ratio(a["examples_per_s"], t["examples_per_s"])
    ratios = [
        f"throughput {ours}/{theirs} = {fmt(train_ratio)} (train time only; >1: alignlab faster)",
        f"steady step time {theirs}/{ours} = {fmt(ratio(t['steady_step_s'], a['steady_step_s']))} "
        f"(>1: alignlab's step faster)",
        f"peak RSS {ours}/{theirs} = {fmt(ratio(a['peak_rss_mb'], t['peak_rss_mb']))}",
    ]
    if a.get("precompute_s") or t.get("precompute_s"):
        # a precompute is work done for this training run, whichever tool does it and wherever: the
        # headline counts it (each tool's own, 0 for a tool that has none), train time only comes second
        headline = ratio(a["examples_per_s_with_precompute"], t["examples_per_s_with_precompute"])
        basis = "train time + reference precompute"
        ratios.insert(0, f"HEADLINE throughput incl. precompute {ours}/{theirs} = {fmt(headline)} "
                         f"({_precompute_words(ours, a)}, {_precompute_words(theirs, t)}; >1: alignlab faster)")
    else:
        headline, basis = train_ratio, "train time"
    warnings = []
    if a["real_tokens"] != t["real_tokens"]:
        warnings.append(f"real tokens differ: {ours} {a['real_tokens']} vs {theirs} {t['real_tokens']}")
    busy = {k: v["max_other_cores"] for k, v in s.items() if v.get("max_other_cores", 0) > 0.25}
    if busy:
        warnings.append("other processes used CPU during some runs (cores, worst run): "
                        + ", ".join(f"{k} {v:.2f}" for k, v in busy.items()) + "; timings are less trustworthy")
    if plain:
        p = s[plain]
        ratios.append(f"{ours} throughput as a fraction of the plain loop = "
                      f"{fmt(ratio(a['examples_per_s'], p['examples_per_s']))} "
                      f"(steady step: {fmt(ratio(p['steady_step_s'], a['steady_step_s']))})")
        if p["padded_tokens"] != a["padded_tokens"]:
            warnings.append(f"padded tokens differ: {ours} {a['padded_tokens']} vs {plain} {p['padded_tokens']}")
    return {"unit": unit, "examples": examples, "contenders": s, "ratios": ratios, "warnings": warnings,
            "headline": {"ours": ours, "theirs": theirs, "ratio": headline, "basis": basis, "train_ratio": train_ratio,
                         "steady_ratio": ratio(t["steady_step_s"], a["steady_step_s"]),
                         "rss_ratio": ratio(a["peak_rss_mb"], t["peak_rss_mb"])},
            **extra}


def save_json(name: str, payload: dict) -> Path:
    """Write out/<name>.json (callers pass `job_name(...)`, so each model size has its own files)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    return path


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table_rows(name: str, payload: dict) -> list[str]:
    """Markdown rows of one benchmark's JSON: one row per contender."""
    rows = []
    unit = payload["unit"]
    for label, s in payload["contenders"].items():
        rows.append(
            f"| {name} | {label} | {fmt(s['train_s'])} | {fmt(s['examples_per_s'], 1)} {unit}/s | "
            f"{fmt(s['precompute_s'])} | {fmt(s['examples_per_s_with_precompute'], 1)} | "
            f"{fmt(s['steady_step_s'], 3)} | {fmt(s['padded_tokens_per_s'], 0)} | {fmt(s['peak_rss_mb'], 0)} | "
            f"{fmt(s['loss_first'], 4)} → {fmt(s['loss_last'], 4)} |"
        )
    return rows


TABLE_HEAD = [
    "| job | contender | train s (median) | throughput | precompute s | throughput incl. precompute | "
    "steady s/step | padded tok/s | peak RSS MiB | loss first → last |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


RL_TABLE_HEAD = [
    ("| job | contender | train s (median) | throughput | steady s/step | rollout s/step | update s/step | "
     "peak RSS MiB | mean reward, first 3 → last 3 steps |"),
    "|---|---|---|---|---|---|---|---|---|",
]


def rl_table_rows(name: str, payload: dict) -> list[str]:
    """Markdown rows of one online-RL job's JSON (bench/rl.py): one row per contender."""
    rows = []
    unit = payload["unit"]
    for label, s in payload["contenders"].items():
        rows.append(
            f"| {name} | {label} | {fmt(s['train_s'])} | {fmt(s['examples_per_s'], 1)} {unit}/s | "
            f"{fmt(s['steady_step_s'], 3)} | {fmt(s.get('rollout_step_s'), 3)} | {fmt(s.get('update_step_s'), 3)} | "
            f"{fmt(s['peak_rss_mb'], 0)} | {fmt(s.get('reward_first'), 4)} → {fmt(s.get('reward_last'), 4)} |"
        )
    return rows


def print_payload(name: str, payload: dict) -> None:
    print("\n".join(TABLE_HEAD + table_rows(name, payload)))
    for line in payload.get("ratios", []):
        print(f"- {line}")


# The comparisons in the order the tables list them, each with what it compares (the summary's words).
# A name with a model suffix (dpo_matched-gpt2-25m) is the same comparison on that model.
COMPARISONS = {
    "dpo_defaults": "DPO, each tool at its defaults (alignlab precomputes, TRL runs a live reference with checkpointing)",
    "dpo_trl_best": "DPO, TRL at its best CPU settings (precompute, its length-grouped sampler, no checkpointing)",
    "dpo_matched": "DPO, both precompute, TRL fed alignlab's batches (identical work)",
    "dpo_live": "DPO, both with a live reference, TRL fed alignlab's batches (identical work)",
    "sft_defaults": "SFT, each tool at its defaults (TRL: random sampler, checkpointing)",
    "sft_trl_best": "SFT, TRL at its best CPU settings (its length-grouped sampler, no checkpointing)",
    "sft_own_sampler": "SFT, TRL's random sampler without checkpointing",
    "sft_matched": "SFT, TRL fed alignlab's batches (identical work)",
    "reward_defaults": "reward model, each tool at its defaults (TRL: random sampler, checkpointing)",
    "reward_trl_best": "reward model, TRL at its best CPU settings (its length-grouped sampler, no checkpointing)",
    "reward_own_sampler": "reward model, TRL's random sampler without checkpointing",
    "reward_matched": "reward model, TRL fed alignlab's batches (identical work)",
    "rl_grpo_trl_gc": "GRPO, TRL with its default gradient checkpointing",
    "rl_grpo": "GRPO, TRL at its best CPU settings (no checkpointing; the same prompts at every step)",
    "rl_grpo_unfused": "GRPO, alignlab with transformers' op-by-op GELU, as TRL runs it",
    "rl_grpo_multinomial": "GRPO, alignlab drawing with torch.multinomial, as TRL does",
    "rl_grpo_static_cache": "GRPO, alignlab with a static KV cache against plain TRL",
    "rl_grpo_static_both": "GRPO, both with a static KV cache",
    "rl_rloo_trl_gc": "RLOO, TRL with its default gradient checkpointing",
    "rl_rloo": "RLOO, TRL at its best CPU settings (no checkpointing; the same prompts at every step)",
    "rl_rloo_unfused": "RLOO, alignlab with transformers' op-by-op GELU, as TRL runs it",
    "rl_rloo_multinomial": "RLOO, alignlab drawing with torch.multinomial, as TRL does",
    "rl_rloo_static_cache": "RLOO, alignlab with a static KV cache against plain TRL",
    "rl_rloo_static_both": "RLOO, both with a static KV cache",
}


def _split_name(stem: str) -> tuple[str, str]:
    """'dpo_matched-gpt2-25m' -> ('dpo_matched', 'gpt2-25m'); 'dpo_matched' -> ('dpo_matched', 'tiny')."""
    for model in MODELS:
        if model != "tiny" and stem.endswith(f"-{model}"):
            return stem[: -len(model) - 1], model
    return stem, "tiny"


def _table_key(stem: str) -> tuple:
    base, model = _split_name(stem)
    order = list(COMPARISONS)
    return (list(MODELS).index(model), order.index(base) if base in order else len(order), base)


SUMMARY_HEAD = [
    "| comparison | model | alignlab | TRL | alignlab ÷ TRL (headline) | counted | train time only | "
    "steady step TRL ÷ alignlab | peak RSS alignlab ÷ TRL |",
    "|---|---|---|---|---|---|---|---|---|",
]


def summary_row(stem: str, payload: dict) -> str | None:
    """One line of the ratio summary: the headline ratio (DPO: counting each tool's reference
    precompute) and the train-time-only ratio beside it."""
    h = payload.get("headline")
    if not h:
        return None
    base, model = _split_name(stem)
    return (f"| {COMPARISONS.get(base, base)} | {model} | {h['ours']} | {h['theirs']} | **{fmt(h['ratio'])}** | "
            f"{h['basis']} | {fmt(h['train_ratio'])} | {fmt(h['steady_ratio'])} | {fmt(h['rss_ratio'])} |")


def main_table() -> None:
    """Print every benchmark result in bench/out/ (what run.sh ends with): the offline jobs' table,
    the online RL table, the ratio summary (headline first), then every ratio, warning and the
    optimizer each contender stepped."""
    files = sorted(OUT.glob("*.json"), key=lambda p: _table_key(p.stem))
    lines, notes, summary, optimizers = list(TABLE_HEAD), [], list(SUMMARY_HEAD), {}
    rl_lines = []  # online RL jobs (bench/rl.py) have their own columns, in a second table
    machines, models = [], []
    for path in files:
        payload = json.loads(path.read_text())
        if "contenders" not in payload:
            continue
        if payload.get("machine") and payload["machine"] not in machines:
            machines.append(payload["machine"])
        if payload.get("model") and payload["model"] not in models:
            models.append(payload["model"])
        if payload.get("kind") == "rl":
            rl_lines += rl_table_rows(path.stem, payload)
        else:
            lines += table_rows(path.stem, payload)
        row = summary_row(path.stem, payload)
        if row:
            summary.append(row)
        notes += [f"{path.stem}: {r}" for r in payload.get("ratios", [])]
        notes += [f"{path.stem}: WARNING: {w}" for w in payload.get("warnings", [])]
        for label, c in payload["contenders"].items():
            users = optimizers.setdefault(c.get("optimizer") or "not recorded", [])
            entry = f"{label} ({_split_name(path.stem)[1]})"
            if entry not in users:
                users.append(entry)
    for line in machines:
        print(f"Machine: {line}")
    for line in models:
        print(f"Model {line}")
    print()
    print("\n".join(lines))
    print()
    if rl_lines:
        print("\n".join(RL_TABLE_HEAD + rl_lines))
        print()
    if len(summary) > len(SUMMARY_HEAD):
        print("alignlab ÷ TRL throughput from the medians above (>1: alignlab faster). The headline counts "
              "each tool's reference precompute where either has one; the train-time-only ratio is beside it.\n")
        print("\n".join(summary))
        print()
    for note in notes:
        print(f"- {note}")
    for optimizer, users in optimizers.items():  # what each contender's first run actually stepped
        print(f"- optimizer stepped: {optimizer} by {', '.join(users)}")


def machine() -> str:
    import platform

    import torch
    import transformers

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = "absent"
    gpu = f", {torch.cuda.get_device_name()}" if DEVICE == "cuda" and torch.cuda.is_available() else ""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl_version}; "
            f"model {MODEL}, device {DEVICE}, {PRECISION}; "
            f"alignlab at {_source_state()}")


def _source_state() -> str:
    """The commit the benchmarked alignlab source is at, and whether src/ had uncommitted edits."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=BENCH.parent, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    edited = [line for line in git("status", "--porcelain", "--", "src").splitlines() if line.strip()]
    return f"{commit}" + (f" + {len(edited)} uncommitted file(s) in src/" if edited else "")


if __name__ == "__main__":
    if sys.argv[1:] == ["table"]:
        main_table()
    elif sys.argv[1:] == ["assets"]:
        build_model()
    else:
        raise SystemExit("usage: python bench/common.py table|assets")


def child_main(a, alignlab_child, trl_child) -> None:
    """One measured run in this (fresh) process: set threads, run the tool, write its result."""
    child_setup(a.threads)
    result = alignlab_child(a) if a.tool == "alignlab" else trl_child(a)
    result["tool"] = a.tool
    write_result(a.result, result)


def driver_parser(description: str, batch: int, lr: float) -> argparse.ArgumentParser:
    """The options every job's driver takes: sizes, learning rate, repeats, threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def trl_records(kind: str, a) -> list[dict]:
    """The job's records for TRL; with `--order alignlab`, laid out in alignlab's epoch-0 batch order
    (otherwise in file order, for TRL's own sampler to draw from)."""
    path = data_file(kind, a.steps * a.batch)
    records = read_jsonl(path)
    if a.order == "alignlab":
        records = in_order(records, alignlab_batches(kind, path, a.batch, seed=0, group_by_length=True))
    return records


def report_jobs(jobs: dict, unit: str, a, runs: dict, settings: dict | None = None) -> None:
    """Summarise the runs, then save and print one comparison per job: name -> (ours, theirs, plain)."""
    examples = a.steps * a.batch
    summary = {k: summarise(v, examples) for k, v in runs.items()}
    extra = {"machine": machine(), "model": model_line(),
             "settings": {**vars(a), **(settings or {}), "spec": SPEC.__dict__}, "runs": runs}
    for name, (ours, theirs, plain) in jobs.items():
        name = job_name(name)
        payload = comparison(name, unit, examples, summary, ours, theirs, plain, extra)
        save_json(name, payload)
        print_payload(name, payload)
        print()
