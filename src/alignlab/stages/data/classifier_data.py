"""Labelled data for constitutional classifiers, written by a generator LLM from a classifier
constitution (`alignlab.guard.constitution`), optionally seeded with real red-team prompts.

1. Held-out evaluation sets first, so nothing of them reaches training: `harmful_heldout.jsonl`
   (`redteam.heldout_prompts` real red-team prompts) and `benign_heldout.jsonl` (alignlab's benign
   requests, harmless look-alikes marked). A training prompt equal to one of them (case, spacing
   and punctuation folded) is dropped and counted (`leaks_dropped`).
2. Prompts: for every category, `prompts_per_category` requests to the generator (draw k shows
   rotated examples and samples with seed + k), cleaned (`guard.synthesis.clean_prompt`, each
   dropped answer counted by reason). With the category's own examples and `redteam.training_prompts`
   real red-team prompts (restricted), de-duplicated; the synthetic prompts are split by
   `eval_fraction` into train and held-out, restricted and allowed ones apart.
3. Responses: the generator answers every prompt with the constitution's response request. A
   response to a restricted prompt is harmful unless it is a refusal (rule-based detector,
   `alignlab.eval.refusal`): a refusal is a harmless output, and the share of them measures how
   much harmful-style text the generator would write. With `refusal_examples`, each restricted
   prompt also gets a written refusal as a harmless output, so the output classifier learns the
   response's content and not only the prompt's.

Writes under `data/`: `inputs_{train,heldout}.jsonl` (prompt, harmful), `outputs_{train,heldout}.jsonl`
(prompt, completion, harmful), the two evaluation sets, and `generations.jsonl` (every generated
prompt with its fate, for reading). Both generation steps are resumable: each batch of `batch_size`
requests is stored in `parts/` as it finishes.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignlab.data.readers import write_jsonl
from alignlab.data.redteam import REFUSALS, as_chat, load_benign, load_redteam
from alignlab.eval.refusal import is_refusal
from alignlab.feedback.ai.cai import PartStore, resume_key
from alignlab.feedback.ai.llm.base import LLMError
from alignlab.feedback.ai.llm_spec import FeedbackGeneration, LLMSpec, answer_relevant, build_llm
from alignlab.guard.constitution import load_classifier_constitution
from alignlab.guard.synthesis import (
    clean_prompt,
    normalise,
    prompt_request,
    response_request,
    shown_examples,
    split_indices,
)
from alignlab.stages.blocks import EvalFractionSettings, SeedSettings
from alignlab.stages.common import finish


class RedTeamSeed(BaseModel):
    """Real red-team prompts (from installed packages, `alignlab.data.redteam`): some held out for
    evaluation, some added to training as restricted prompts, disjoint draws."""

    model_config = ConfigDict(extra="forbid")

    sources: list[Literal["advbench", "harmbench", "donotanswer"]] = Field(["advbench"], min_length=1)
    training_prompts: int = Field(0, ge=0, description="added to training as restricted prompts")
    heldout_prompts: int = Field(64, gt=0, description="held out: harmful_heldout.jsonl, for the block rate")


class ClassifierDataConfig(SeedSettings, EvalFractionSettings):
    stage_defaults: ClassVar[dict[str, Any]] = {"eval_fraction": 0.2}

    generator: LLMSpec = Field(description="the LLM that writes prompts and responses")
    constitution: str = Field("default", description="'default' or a YAML file")
    prompts_per_category: int = Field(8, ge=0, description="prompt requests per category")
    prompt_generation: FeedbackGeneration = FeedbackGeneration(max_tokens=48, temperature=1.0, top_p=0.95)
    response_generation: FeedbackGeneration = FeedbackGeneration(max_tokens=64)
    redteam: RedTeamSeed | None = Field(None, description="real red-team prompts: held out, and optionally trained on")
    refusal_examples: bool = Field(True, description="a written refusal to each restricted prompt, as a harmless output")
    batch_size: int = Field(16, gt=0, description="requests per stored batch (the unit of resumption)")


def _chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _heldout_sets(cfg: ClassifierDataConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """(held-out harmful, red-team prompts for training, held-out benign), disjoint by construction."""
    benign = load_benign()
    if cfg.redteam is None:
        return [], [], benign
    seen, pool = set(), []
    for source in cfg.redteam.sources:
        for record in load_redteam(source):
            if normalise(record["prompt"]) not in seen:
                seen.add(normalise(record["prompt"]))
                pool.append(record)
    wanted = cfg.redteam.heldout_prompts + cfg.redteam.training_prompts
    if wanted > len(pool):
        raise ValueError(f"redteam: heldout_prompts + training_prompts = {wanted}, but {', '.join(cfg.redteam.sources)} "
                         f"hold {len(pool)} distinct prompts")
    drawn = random.Random(cfg.seed).sample(pool, wanted)
    return drawn[: cfg.redteam.heldout_prompts], drawn[cfg.redteam.heldout_prompts :], benign


def run(cfg: ClassifierDataConfig, out: Path) -> dict:
    constitution = load_classifier_constitution(cfg.constitution)
    harmful_heldout, redteam_train, benign_heldout = _heldout_sets(cfg)
    reserved = {normalise(r["prompt"]) for r in harmful_heldout + benign_heldout}
    generator = build_llm(cfg.generator, cache_dir=out)
    key = resume_key(cfg.model_dump(exclude={"generator", "batch_size"}), answer_relevant(cfg.generator),
                     constitution.model_dump())
    generated, prompt_store = _generate_prompts(cfg, constitution, generator, key, out)
    kept, drops = _pool(constitution, redteam_train, generated, reserved)
    _split(kept, cfg)
    responses, response_store = _generate_responses(cfg, constitution, generator, resume_key(
        key, [(c["prompt"], c["kind"]) for c in kept]), kept, out)
    inputs, outputs, counts = _datasets(kept, responses, cfg.refusal_examples)
    data = out / "data"
    for split in ("train", "heldout"):
        write_jsonl(data / f"inputs_{split}.jsonl", inputs[split])
        write_jsonl(data / f"outputs_{split}.jsonl", outputs[split])
    write_jsonl(data / "harmful_heldout.jsonl", map(as_chat, harmful_heldout))
    write_jsonl(data / "benign_heldout.jsonl", map(as_chat, benign_heldout))
    write_jsonl(data / "generations.jsonl", generated)

    requested = len(generated)
    accepted = sum(g["dropped"] is None for g in generated)
    restricted_answers = counts["restricted_responses_refused"] + counts["restricted_responses_compliant"]
    metrics = {
        "categories": {"restricted": len(constitution.restricted), "allowed": len(constitution.allowed),
                       "lookalike": sum(c.lookalike for c in constitution.allowed)},
        "prompt_requests": requested,
        "generated_prompts_kept": accepted,
        "generated_prompt_yield": accepted / requested if requested else float("nan"),
        "dropped": dict(sorted(drops.items())),
        "prompts_by_origin": dict(Counter(c["origin"] for c in kept)),
        "inputs": {s: {"n": len(v), "harmful": sum(r["harmful"] for r in v)} for s, v in inputs.items()},
        "outputs": {s: {"n": len(v), "harmful": sum(r["harmful"] for r in v)} for s, v in outputs.items()},
        "generator_refusal_rate": (counts["restricted_responses_refused"] / restricted_answers
                                   if restricted_answers else float("nan")),
        "responses": dict(counts),
        "harmful_heldout": len(harmful_heldout),
        "benign_heldout": len(benign_heldout),
        "lookalike_heldout": sum(r["lookalike"] for r in benign_heldout),
        "batches_resumed": prompt_store.resumed_batches + response_store.resumed_batches,
    }
    result = finish(out, cfg, metrics)
    shutil.rmtree(out / "parts", ignore_errors=True)  # both stores: the final files are written
    return result


def _generate_prompts(cfg: ClassifierDataConfig, constitution, generator, key: str, out: Path) -> tuple[list[dict], PartStore]:
    """`prompts_per_category` draws per category, each a request to write one user message; resumable."""
    categories = constitution.categories()
    jobs = [(k, c) for k in range(cfg.prompts_per_category) for c in range(len(categories))]

    def write_prompts(indices: list[int]) -> list[dict]:
        records: list[dict] = [{}] * len(indices)
        by_draw: dict[int, list[int]] = {}
        for pos, i in enumerate(indices):
            by_draw.setdefault(jobs[i][0], []).append(pos)
        for k, positions in by_draw.items():  # one call per draw: the draw's seed is in its settings
            cats = [categories[jobs[indices[p]][1]] for p in positions]
            answers = generator.chat([_chat(prompt_request(constitution, c, k)) for _, c in cats],
                                     cfg.prompt_generation.settings(seed=cfg.seed + k))
            for p, (kind, category), answer in zip(positions, cats, answers):
                text, reason = (None, "generator_error") if isinstance(answer, LLMError) else \
                    clean_prompt(answer, shown_examples(category, k))
                records[p] = {"index": indices[p], "kind": kind, "category": category.name, "draw": k,
                              "raw": str(answer), "prompt": text, "dropped": reason}
        return records

    store = PartStore(out / "parts" / "prompts", key, len(jobs), cfg.batch_size)
    return store.run(write_prompts), store


def _pool(constitution, redteam_train: list[dict], generated: list[dict], reserved: set[str]) -> tuple[list[dict], Counter]:
    """Constitution examples, then real red-team prompts, then generated ones; the first copy wins and
    nothing held out for evaluation gets in (a generated record notes why it was dropped)."""
    candidates = [{"prompt": e, "kind": kind, "category": c.name, "origin": "constitution"}
                  for kind, c in constitution.categories() for e in c.examples]
    candidates += [{"prompt": r["prompt"], "kind": "restricted", "category": f"redteam_{r['source']}",
                    "origin": "redteam"} for r in redteam_train]
    candidates += [{"prompt": g["prompt"], "kind": g["kind"], "category": g["category"], "origin": "generated",
                    "ref": n} for n, g in enumerate(generated) if g["prompt"] is not None]
    seen: set[str] = set()
    kept, drops = [], Counter(g["dropped"] for g in generated if g["dropped"])
    for candidate in candidates:
        key_text = normalise(candidate["prompt"])
        fate = "leak" if key_text in reserved else "duplicate" if key_text in seen else None
        if fate is None:
            seen.add(key_text)
            kept.append(candidate)
            continue
        drops[f"{fate}_{candidate['origin']}"] += 1
        if "ref" in candidate:
            generated[candidate["ref"]]["dropped"] = fate
    return kept, drops


def _split(kept: list[dict], cfg: ClassifierDataConfig) -> None:
    """Marks each prompt train or heldout, stratified so that both labels are held out (red-team
    seeds always train: the held-out red-team prompts are a separate, disjoint draw)."""
    held: set[int] = set()
    for kind in ("restricted", "allowed"):
        synthetic = [i for i, c in enumerate(kept) if c["origin"] != "redteam" and c["kind"] == kind]
        held |= {synthetic[p] for p in split_indices(len(synthetic), cfg.eval_fraction, cfg.seed)[1]}
    for i, candidate in enumerate(kept):
        candidate["split"] = "heldout" if i in held else "train"


def _generate_responses(cfg: ClassifierDataConfig, constitution, generator, key: str, kept: list[dict],
                        out: Path) -> tuple[list[dict], PartStore]:
    """One response per kept prompt, written in the role its label asks for; resumable."""
    by_name = {c.name: c for _, c in constitution.categories()}

    def write_responses(indices: list[int]) -> list[dict]:
        requests = [_chat(response_request(constitution, kept[i]["kind"], by_name.get(kept[i]["category"]),
                                           kept[i]["prompt"])) for i in indices]
        answers = generator.chat(requests, cfg.response_generation.settings(seed=cfg.seed))
        return [{"index": i, "response": None if isinstance(a, LLMError) else a.strip(),
                 "error": str(a) if isinstance(a, LLMError) else None} for i, a in zip(indices, answers)]

    store = PartStore(out / "parts" / "responses", key, len(kept), cfg.batch_size)
    return store.run(write_responses), store


def _datasets(kept: list[dict], responses: list[dict], refusal_examples: bool) -> tuple[dict, dict, Counter]:
    """Input-classifier records (the prompt, harmful if restricted) and output-classifier records (the
    response, harmful if restricted and not a refusal; plus a written refusal per restricted prompt)."""
    inputs: dict[str, list[dict]] = {"train": [], "heldout": []}
    outputs: dict[str, list[dict]] = {"train": [], "heldout": []}
    counts: Counter = Counter()
    for i, (candidate, answer) in enumerate(zip(kept, responses)):
        restricted = candidate["kind"] == "restricted"
        base = {"prompt": _chat(candidate["prompt"]), "category": candidate["category"], "origin": candidate["origin"]}
        inputs[candidate["split"]].append({**base, "harmful": restricted})
        text = answer["response"]
        if not text:
            counts["responses_failed" if answer["error"] else "responses_empty"] += 1
        else:
            refused = is_refusal(text)
            counts["restricted_responses_refused" if restricted and refused else
                   "restricted_responses_compliant" if restricted else "allowed_responses"] += 1
            outputs[candidate["split"]].append({**base, "completion": [{"role": "assistant", "content": text}],
                                                "harmful": restricted and not refused,
                                                "response_origin": "generator"})
        if restricted and refusal_examples:
            outputs[candidate["split"]].append({**base, "completion": [{"role": "assistant",
                                                                        "content": REFUSALS[i % len(REFUSALS)]}],
                                                "harmful": False, "response_origin": "written_refusal"})
    return inputs, outputs, counts
