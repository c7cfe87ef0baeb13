"""Process- and outcome-supervision data from the policy's own samples, labelled by a checker.

For every prompt, k solutions are sampled from the policy and labelled by a step-checkable task
(`label_solution`: one label per step, the answer line last; `gold_reward`: the final answer's
correctness). That is the data Lightman et al. (2023) label by hand, here labelled exactly:

- ``steps_{split}.jsonl``: stepwise records (prompt, completions = steps, labels) for the prm stage;
- ``outcomes_{split}.jsonl``: the same solutions as one "step" (the steps joined by newlines)
  labelled by final-answer correctness, for an ORM trained by the prm stage (a classifier, as in
  the paper);
- ``pairs_{split}.jsonl``: a right ≻ wrong solution pair per prompt and pair of samples, for an
  ORM trained by the reward_model stage (Bradley–Terry).

The split is by prompt, so held-out figures come from problems the scorers never trained on.
Samples without a single step (empty completions) are dropped and counted.
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import Field

from alignlab.data.readers import write_jsonl
from alignlab.rollout import SamplingSettings
from alignlab.stages.blocks import EvalFractionSettings, ModelSettings, PromptLengthSettings, SeedSettings
from alignlab.stages.common import finish
from alignlab.stages.online.common import sample_policy
from alignlab.tasks import TaskSpec, get_task


class StepLabelsConfig(ModelSettings, PromptLengthSettings, SeedSettings, EvalFractionSettings):
    prompts: str
    task: TaskSpec = Field(description="a step-checkable built-in task, e.g. arithmetic")
    samples_per_prompt: int = Field(8, gt=0)
    n_prompts: int | None = Field(None, gt=0, description="use the first n_prompts prompts only")
    max_pairs_per_prompt: int = Field(4, ge=0, description="right ≻ wrong pairs kept per prompt")
    sampling: SamplingSettings = SamplingSettings()


def step_checkable(spec: TaskSpec):
    """The task `spec` names, checked to label steps and give final answers."""
    task = get_task(spec)
    missing = [m for m in ("label_solution", "final_answer", "is_final_step") if not hasattr(task, m)]
    if missing:
        raise ValueError(f"task {task.name!r} cannot check steps: it has no {', '.join(missing)}")
    return task


def outcome_record(prompt: str, steps: list[str], correct: bool) -> dict:
    """An ORM example: the whole solution as one step, labelled by final-answer correctness."""
    return {"prompt": prompt, "completions": ["\n".join(steps)], "labels": [bool(correct)]}


def run(cfg: StepLabelsConfig, out: Path) -> dict:
    task = step_checkable(cfg.task)
    k = cfg.samples_per_prompt
    drawn = sample_policy(cfg.model, cfg.prompts, k, cfg.sampling, max_prompt_length=cfg.max_prompt_length,
                          n_prompts=cfg.n_prompts, seed=cfg.seed)
    prompts, texts = drawn.prompts, drawn.texts
    right_answer = [g == 1.0 for g in task.gold_reward(drawn.row_prompts, texts)]

    rng = random.Random(cfg.seed)
    # Split by problem text, not position: a prompt file may hold a problem more than once.
    problems = list(dict.fromkeys(prompts))
    held_out = set(rng.sample(problems, round(cfg.eval_fraction * len(problems))))
    files = {kind: {"train": [], "test": []} for kind in ("steps", "outcomes", "pairs")}
    counts = {"samples": 0, "dropped_empty": 0, "correct": 0, "with_wrong_step": 0, "steps": 0, "right_steps": 0}
    for p, prompt in enumerate(prompts):
        split = "test" if prompt in held_out else "train"
        right, wrong = [], []
        for text, correct in zip(texts[p * k : (p + 1) * k], right_answer[p * k : (p + 1) * k]):
            steps, labels = task.label_solution(prompt, text)
            if not steps:
                counts["dropped_empty"] += 1
                continue
            files["steps"][split].append({"prompt": prompt, "completions": steps, "labels": labels})
            files["outcomes"][split].append(outcome_record(prompt, steps, correct))
            (right if correct else wrong).append("\n".join(steps))
            counts["samples"] += 1
            counts["correct"] += correct
            counts["with_wrong_step"] += not all(labels)
            counts["steps"] += len(labels)
            counts["right_steps"] += sum(labels)
        pairs = [(r, w) for r in right for w in wrong]
        for chosen, rejected in rng.sample(pairs, min(len(pairs), cfg.max_pairs_per_prompt)):
            files["pairs"][split].append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    for kind, splits in files.items():
        for split, records in splits.items():
            write_jsonl(out / "data" / f"{kind}_{split}.jsonl", records)

    samples = max(counts["samples"], 1)
    return finish(out, cfg, {
        **counts,
        "prompts": len(prompts),
        "problems": len(problems),
        "held_out_problems": len(held_out),
        "accuracy": counts["correct"] / samples,
        "share_with_wrong_step": counts["with_wrong_step"] / samples,
        "right_step_rate": counts["right_steps"] / max(counts["steps"], 1),
        "files": {f"{kind}_{split}": len(records) for kind, splits in files.items() for split, records in splits.items()},
    })


__all__ = ["StepLabelsConfig", "outcome_record", "run", "step_checkable"]
