"""Hybrid labelling stage: route AI-labelled pairs to acceptance or to people, then merge.

Run once without `human_labels`: it writes `data/ai_accepted.jsonl` and `data/human_queue.jsonl`
(items for `alignlab label serve`), and stops with `AwaitingHumanLabels` (no done.json, so a
recipe stops here and resumes this stage next time). Label the queue, export the labels, and run
again with `human_labels: <export>`: it merges into `data/merged.jsonl` (the final preference
dataset), measures AI/human agreement and writes `agreement.md`. With nothing to ask people (every
pair accepted) it finishes on the first run. Routing and agreement: `alignlab.feedback.human.hybrid`.

metrics.json: the routing counts, the merge counts and the agreement report.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from alignlab.data.formats import load_preferences
from alignlab.data.readers import write_jsonl
from alignlab.feedback.human.hybrid import (
    agreement_markdown,
    agreement_report,
    ai_accepted_records,
    check_thresholds,
    human_queue,
    merge,
    route_counts,
    route_pairs,
)
from alignlab.feedback.human.labels_judge import PairLabels
from alignlab.stages.blocks import SeedSettings
from alignlab.stages.common import finish, write_json
from alignlab.files import write_text_atomic

QUEUE = "data/human_queue.jsonl"


class AwaitingHumanLabels(RuntimeError):
    """The queue is written and people have not labelled it yet: not a failure, a pause."""


class HybridLabelsConfig(SeedSettings):
    ai_labels: str = Field(description="preference file whose `label` is the AI's P(chosen ≻ rejected)")
    ai_threshold: float = Field(0.6, ge=0, le=1, description="confidence |P − 0.5|·2 at or above which the AI label is accepted")
    human_threshold: float = Field(0.2, ge=0, le=1, description="confidence below which only people label the pair")
    human_labels: str | None = Field(None, description="people's labels of the queue (the labelling app's export, a preference file)")
    bucket_width: float = Field(0.1, gt=0, le=1, description="width of the confidence buckets in the agreement report")

    @model_validator(mode="after")
    def _ordered(self) -> HybridLabelsConfig:
        check_thresholds(self.ai_threshold, self.human_threshold)
        return self

def run(cfg: HybridLabelsConfig, out: Path) -> dict:
    out = Path(out)
    labels = PairLabels.from_file(cfg.human_labels) if cfg.human_labels else None  # validate before writing
    pairs = route_pairs(load_preferences(cfg.ai_labels), cfg.ai_threshold, cfg.human_threshold)
    queue = human_queue(pairs, cfg.seed)
    write_jsonl(out / "data" / "ai_accepted.jsonl", ai_accepted_records(pairs))
    write_jsonl(out / QUEUE, queue)
    metrics: dict = {"pairs": len(pairs), "routes": route_counts(pairs), "queued": len(queue),
                     "ai_threshold": cfg.ai_threshold, "human_threshold": cfg.human_threshold}

    if queue and labels is None:
        write_json(out / "metrics.json", {**metrics, "status": "awaiting_human_labels"})
        # Outside the stage directory: `--redo` deletes that, and people's work must survive it.
        db, export = out.parent / f"{out.name}-labels.sqlite", out.parent / f"{out.name}-human-labels.jsonl"
        raise AwaitingHumanLabels(
            f"{len(queue)} items await human labels: run `alignlab label serve {out / QUEUE} --db {db}` "
            f"(add labellers first with `alignlab label tokens {db} --add NAME`), export the labels with "
            f"`alignlab label export {db} --out {export}`, then run this stage again with "
            f"human_labels: {export} (command line: --human_labels {export}). "
            f"{metrics['routes']['ai']} AI labels were accepted: {out / 'data' / 'ai_accepted.jsonl'}."
        )

    result = merge(pairs, labels or PairLabels([]))
    labelled = result.counts["both_labelled"] + result.counts["human_labelled"]
    if queue and labelled == 0:
        raise ValueError(
            f"{cfg.human_labels}: none of the {len(queue)} queued pairs is labelled there (pairs are matched "
            f"by prompt and both responses); is it the export of {out / QUEUE}?"
        )
    report = agreement_report(result.comparisons, cfg.bucket_width)
    write_jsonl(out / "data" / "merged.jsonl", result.records)
    write_text_atomic(out / "agreement.md", "# AI / human agreement\n\n" + agreement_markdown(report))
    return finish(out, cfg, {**metrics, "status": "merged", **result.counts, "agreement": report})
