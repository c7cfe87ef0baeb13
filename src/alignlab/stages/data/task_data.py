"""Write a built-in task's datasets as ordinary files, so later stages read them like user data."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alignlab.data.readers import write_jsonl
from alignlab.stages.blocks import SeedSettings
from alignlab.stages.common import finish
from alignlab.tasks import TaskSpec, get_task


class TaskDataConfig(SeedSettings):
    task: TaskSpec
    sft_size: int = Field(2000, gt=0)
    train_prompts: int = Field(1000, gt=0)
    test_prompts: int = Field(200, gt=0)


def run(cfg: TaskDataConfig, out: Path) -> dict:
    task = get_task(cfg.task)
    data = out / "data"
    sft = task.sft_examples(cfg.sft_size, seed=cfg.seed + 1)  # a different draw from the pretraining corpus
    write_jsonl(data / "sft.jsonl", sft)
    counts = {"sft_examples": len(sft)}
    for split, n in (("train", cfg.train_prompts), ("test", cfg.test_prompts)):
        prompts = task.prompts(split, n, seed=cfg.seed)
        write_jsonl(data / f"prompts_{split}.jsonl", ({"prompt": p} for p in prompts))
        counts[f"{split}_prompts"] = len(prompts)
    return finish(out, cfg, counts)
