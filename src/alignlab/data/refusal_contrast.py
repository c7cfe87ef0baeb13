"""alignlab's contrast prompts for refusal calibration: safe requests that only look harmful, each
with a surface topic, and the topics' patterns for finding red-team prompts on the same topic (see
`prompts/refusal_contrast.yaml`). A user's own contrast file is read with `load_prompts` instead."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

PATH = Path(__file__).parent / "prompts" / "refusal_contrast.yaml"


def load_contrast(path: Path = PATH) -> tuple[list[dict], dict[str, str]]:
    """([{prompt, topic}], {topic: regular expression}); a prompt's topic must be one of the topics."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    topics = dict(data["topics"])
    for topic, pattern in topics.items():
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{path}: topics.{topic}: not a regular expression ({e})") from None
    records = []
    for i, r in enumerate(data["prompts"]):
        if r.get("topic") not in topics:
            raise ValueError(f"{path}: prompts[{i}]: topic {r.get('topic')!r} is not one of the topics")
        records.append({"prompt": r["prompt"], "topic": r["topic"]})
    return records, topics
