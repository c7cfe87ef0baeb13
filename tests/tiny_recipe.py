"""A tiny version of recipes/quickstart.yaml for end-to-end tests.

Same stages, same references between them, but sizes cut down so the whole recipe runs in
seconds on two CPU cores: a 1500-review corpus, a 1-layer model of width 32, a few optimizer
steps per stage, and a checkpoint every 2 steps so a kill usually lands between checkpoints.

Run it with one torch thread (`OMP_NUM_THREADS=1` for a subprocess, `torch.set_num_threads(1)`
in-process): ops this small gain nothing from threads, and on a busy machine two spinning threads
per process made the recipe ~10x slower (17 s instead of under 2 s, plus imports).

    from tiny_recipe import write_tiny_recipe
    recipe = write_tiny_recipe(tmp_path)                            # tmp_path/tiny.yaml
    recipe = write_tiny_recipe(tmp_path, dpo={"beta": 0.5})         # merged into stage `dpo`
    recipe = write_tiny_recipe(tmp_path, name="other")              # top-level keys too
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

# A train block shared by the training stages: frequent checkpoints, constant LR, seeded.
_TRAIN = {"batch_size": 16, "epochs": 1, "schedule": "constant", "save_every": 2, "seed": 0}

TINY_RECIPE: dict = {
    "name": "tiny",
    "description": "quickstart scaled down for tests",
    "stages": {
        "task": {"type": "task_data", "task": "sentiment", "sft_size": 160, "train_prompts": 48, "test_prompts": 8},
        "pretrain": {
            "task": "sentiment", "corpus_size": 1500, "vocab_size": 300, "hidden_size": 32,
            "num_layers": 1, "num_heads": 2, "max_length": 48,
            "train": {**_TRAIN, "lr": 3.0e-3, "batch_size": 32, "max_steps": 6},
        },
        "sft": {
            "model": "@pretrain/model", "data": "@task/data/sft.jsonl", "max_length": 64,
            "max_prompt_length": 40, "train": {**_TRAIN, "lr": 1.0e-3, "max_steps": 8},
        },
        "pairs": {
            "type": "sample_pairs", "model": "@sft/model", "prompts": "@task/data/prompts_train.jsonl",
            "task": "sentiment", "samples_per_prompt": 3, "eval_fraction": 0.2,
            "sampling": {"max_new_tokens": 16, "temperature": 1.0, "batch_size": 64},
        },
        "reward_model": {
            "model": "@sft/model", "data": "@pairs/data/train.jsonl", "eval_data": "@pairs/data/test.jsonl",
            "max_length": 64, "max_prompt_length": 40,
            "train": {**_TRAIN, "lr": 1.0e-3, "batch_size": 8, "max_steps": 4},
        },
        "dpo": {
            "model": "@sft/model", "data": "@pairs/data/train.jsonl", "eval_data": "@pairs/data/test.jsonl",
            "beta": 0.1, "max_length": 64, "max_prompt_length": 40,
            "train": {**_TRAIN, "lr": 1.0e-3, "batch_size": 8, "max_steps": 12},
        },
        "evaluate": {
            "models": {"sft": "@sft/model", "dpo": "@dpo/model"}, "reference": "@sft/model",
            "prompts": "@task/data/prompts_test.jsonl", "task": "sentiment",
            "reward_model": "@reward_model/model", "samples_per_prompt": 1,
            "sampling": {"max_new_tokens": 16, "temperature": 1.0, "batch_size": 64},
        },
        "report": {"evaluate": "@evaluate", "reward_model": "@reward_model", "baseline": "sft", "title": "tiny"},
    },
}


def merge_settings(base: dict, extra: dict) -> dict:
    """`extra` merged into `base` recursively (a dict merges into a dict, anything else replaces)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_settings(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_recipe(**overrides) -> dict:
    """The tiny recipe as a dict. A keyword naming a stage merges into that stage's settings
    (``dpo={"beta": 0.5}``; ``None`` removes the stage); any other keyword sets a top-level key."""
    recipe = copy.deepcopy(TINY_RECIPE)
    for key, value in overrides.items():
        if key in recipe["stages"]:
            if value is None:
                del recipe["stages"][key]
            else:
                recipe["stages"][key] = merge_settings(recipe["stages"][key], value)
        else:
            recipe[key] = value
    return recipe


def write_tiny_recipe(dir: Path, **overrides) -> Path:
    """Write the tiny recipe (with `overrides`, as for `tiny_recipe`) to `dir`/<name>.yaml; return its path."""
    recipe = tiny_recipe(**overrides)
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    path = dir / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path
