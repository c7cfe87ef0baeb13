"""Real red-team prompts from installed packages (see `alignlab.data.redteam`), split for a
constitutional run, each prompt as a one-turn conversation (a chat model answers in its own
template): `train.jsonl` (the prompts SL-CAI and RLAIF work on), `test.jsonl` (held out, for
measuring harmful compliance), `check_pairs.jsonl` (a third, disjoint draw as known pairs: a refusal
≻ compliance, for checking AI labels) and `benign.jsonl` (alignlab's benign requests, for measuring
over-refusal). Prompts are de-duplicated across sources, then drawn with `seed`."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field

from alignlab.data.readers import write_jsonl
from alignlab.data.redteam import as_chat, known_pair, load_benign, load_redteam
from alignlab.stages.blocks import SeedSettings
from alignlab.stages.common import finish


class RedTeamDataConfig(SeedSettings):
    sources: list[Literal["advbench", "harmbench", "donotanswer"]] = Field(["advbench"], min_length=1)
    train_size: int = Field(64, gt=0, description="red-team prompts to align on")
    test_size: int = Field(64, gt=0, description="held-out red-team prompts to evaluate on")
    check_size: int = Field(64, ge=0, description="known pairs (refusal ≻ compliance) for checking AI labels")


def run(cfg: RedTeamDataConfig, out: Path) -> dict:
    seen, pool = set(), []
    for source in cfg.sources:
        for record in load_redteam(source):
            if record["prompt"].lower() not in seen:
                seen.add(record["prompt"].lower())
                pool.append(record)
    wanted = cfg.train_size + cfg.test_size + cfg.check_size
    if wanted > len(pool):
        raise ValueError(f"train_size + test_size + check_size = {wanted}, but {', '.join(cfg.sources)} hold "
                         f"{len(pool)} distinct prompts")
    drawn = random.Random(cfg.seed).sample(pool, wanted)
    train, test = drawn[: cfg.train_size], drawn[cfg.train_size : cfg.train_size + cfg.test_size]
    check = drawn[cfg.train_size + cfg.test_size :]
    data = out / "data"
    write_jsonl(data / "train.jsonl", map(as_chat, train))
    write_jsonl(data / "test.jsonl", map(as_chat, test))
    write_jsonl(data / "check_pairs.jsonl", [known_pair(r, i) for i, r in enumerate(check)])
    benign = load_benign()
    write_jsonl(data / "benign.jsonl", map(as_chat, benign))
    return finish(out, cfg, {
        "pool": len(pool), "train": len(train), "test": len(test), "check_pairs": len(check), "benign": len(benign),
        "by_source": dict(Counter(r["source"] for r in drawn)),
        "top_harm_categories": dict(Counter(c for r in drawn for c in r["harm_categories"]).most_common(8)),
    })
