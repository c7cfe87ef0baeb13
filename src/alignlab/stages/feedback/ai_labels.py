"""AI labels stage (RLAIF): soft preference labels for response pairs from a feedback model.

Pairs come from a file (`pairs`: records with prompt/response_a/response_b), or are sampled from
`policy`: two responses per prompt of `prompts`. Writes `data/preferences.jsonl` (prompt, chosen,
rejected, soft `label` = P(chosen ≻ rejected)), which the reward_model and dpo stages train on as
it is, and `data/labels.jsonl` (every pair: per-principle and per-order probabilities, or why it
was skipped or failed). Two methods: `choice` asks the feedback model which response is better under a
principle (`alignlab.feedback.ai.labels`, the paper's multiple choice, both orders); `contrast` asks it
nothing and scores each response by how much likelier the principle's `follow` persona makes it than
its `violate` persona (`alignlab.feedback.ai.contrast_labels`: for a model too small to answer the
question). `principles` restricts the constitution to the named principles (e.g. the harm ones for
red-team prompts).

With `check` (preference records whose `chosen` is known to be better), those pairs are labelled
the same way and the stage reports how often the labels agree with the known answers, and the
position bias (`metrics.json` → `check`; their labels in `data/check_labels.jsonl`).

Pairs are labelled in fixed batches of `batch_size`, each stored in `parts/` as it finishes, so a
killed run resumes without asking about finished pairs again.
"""

from __future__ import annotations

from pathlib import Path

from typing import Literal

from pydantic import Field, model_validator

from alignlab.data.formats import load_preferences, load_prompts
from alignlab.data.readers import write_jsonl
from alignlab.feedback.ai.labels import (
    REASONING_STOP,
    LabelSettings,
    Pair,
    label_pairs,
    load_pairs,
    write_label_outputs,
)
from alignlab.feedback.ai.cai import PartStore, resume_key
from alignlab.feedback.ai.contrast_labels import label_pairs_by_contrast, require_personas
from alignlab.feedback.ai.label_check import check_figures, known_pairs
from alignlab.feedback.ai.constitution import Constitution, load_constitution
from alignlab.feedback.ai.llm_spec import (
    FeedbackGeneration,
    LLMSpec,
    answer_relevant,
    build_llm,
)
from alignlab.rollout import SamplingSettings
from alignlab.stages.blocks import PromptLengthSettings, SeedSettings
from alignlab.stages.common import (
    file_fingerprint,
    finish,
    seed_everything,
)
from alignlab.stages.feedback.sl_cai import PolicyResponder


class AILabelsConfig(PromptLengthSettings, SeedSettings):
    feedback: LLMSpec = Field(description="the model that compares the two responses")
    pairs: str | None = Field(None, description="records with prompt (or messages), response_a, response_b")
    prompts: str | None = Field(None, description="prompts to sample two responses each from `policy`")
    policy: str | None = None
    constitution: str = Field("default", description="'default' or a YAML file")
    principles: list[str] | None = Field(None, min_length=1, description="only these principles of the constitution")
    method: Literal["choice", "contrast"] = Field(
        "choice", description="choice: the feedback model answers which response is better (A/B, both orders); "
        "contrast: each response scored by log p(r | follow persona) - log p(r | violate persona) per character")
    contrast_scale: float = Field(100.0, gt=0, description="contrast: P(a better) = sigmoid(scale * (d(a) - d(b))), "
                                  "d in nats per character: the evidence of a response `scale` characters long")
    principles_per_pair: int = Field(1, ge=1, description="distinct principles drawn per pair; labels averaged")
    chain_of_thought: bool = Field(False, description="reason first; probabilities clamped to [0.4, 0.6]")
    format: Literal["completion", "chat"] = Field("completion", description="chat: the question in the feedback "
                                                  "model's own chat template (local models)")
    combine_orders: Literal["logit", "probability"] = Field(
        "logit", description="logit: the two orders' log-odds averaged, a constant position bias removed exactly; "
        "probability: their probabilities averaged (pulls labels toward 0.5)")
    check: str | None = Field(None, description="preference records whose chosen is known to be better: "
                              "the labels' agreement with them is reported")
    reasoning: FeedbackGeneration = FeedbackGeneration(max_tokens=128)
    sampling: SamplingSettings = SamplingSettings(max_new_tokens=128)
    batch_size: int = Field(16, gt=0, description="pairs per stored batch (the unit of resumption)")
    device: str = Field("auto", description="where the policy samples")

    @model_validator(mode="after")
    def _one_source(self) -> AILabelsConfig:
        if (self.pairs is None) == (self.prompts is None):
            raise ValueError("give either `pairs` (a file of response pairs) or `prompts` with `policy`")
        if self.prompts is not None and self.policy is None:
            raise ValueError("`prompts` needs `policy`, the model that answers them twice")
        if self.pairs is not None and self.policy is not None:
            raise ValueError("`policy` is only used with `prompts`; the pairs file already has the responses")
        return self


def selected_constitution(cfg: AILabelsConfig) -> Constitution:
    """The constitution, restricted to `principles` when named; contrast labels need every principle's personas."""
    constitution = load_constitution(cfg.constitution)
    if cfg.principles is not None:
        unknown = [name for name in cfg.principles if name not in {p.name for p in constitution.principles}]
        if unknown:
            raise ValueError(f"principles: {', '.join(unknown)} not in constitution {constitution.name!r} "
                             f"(it has {', '.join(p.name for p in constitution.principles)})")
        kept = [p for p in constitution.principles if p.name in cfg.principles]
        examples = [e for e in constitution.examples if e.principle in cfg.principles]
        constitution = constitution.model_copy(update={"principles": kept, "examples": examples})
    if cfg.method == "contrast":
        require_personas(constitution)  # before any model is loaded
    return constitution


def run(cfg: AILabelsConfig, out: Path) -> dict:
    constitution = selected_constitution(cfg)
    if cfg.principles_per_pair > len(constitution.principles):
        raise ValueError(
            f"principles_per_pair={cfg.principles_per_pair} but constitution {constitution.name!r} has "
            f"{len(constitution.principles)} principles"
        )
    settings = LabelSettings(
        principles_per_pair=cfg.principles_per_pair, chain_of_thought=cfg.chain_of_thought,
        reasoning=cfg.reasoning.settings(stop=REASONING_STOP, seed=cfg.seed), seed=cfg.seed,
        format=cfg.format, combine=cfg.combine_orders, method=cfg.method, contrast_scale=cfg.contrast_scale,
    )
    label = label_pairs_by_contrast if cfg.method == "contrast" else label_pairs
    if cfg.pairs is not None:
        pairs = load_pairs(cfg.pairs)
        make_pairs = lambda indices: [pairs[i] for i in indices]
        n, data = len(pairs), cfg.pairs
    else:
        prompts = load_prompts(cfg.prompts)
        policy = PolicyResponder(cfg.policy, cfg.sampling, cfg.device, cfg.seed)
        prompt_ids = policy.prompt_ids(prompts, cfg.max_prompt_length)

        def make_pairs(indices: list[int]) -> list[Pair]:
            texts = policy([prompt_ids[i] for i in indices], indices[0], copies=2)
            return [Pair(i, prompts[i].prompt, texts[2 * j], texts[2 * j + 1]) for j, i in enumerate(indices)]

        n, data = len(prompts), cfg.prompts
    seed_everything(cfg.seed)
    feedback = build_llm(cfg.feedback, cache_dir=out)
    key = resume_key(
        cfg.model_dump(exclude={"feedback", "device"}), answer_relevant(cfg.feedback), file_fingerprint(data),
        constitution.model_dump(),
    )
    store = PartStore(out / "parts", key, n, cfg.batch_size)
    labels = store.run(lambda indices: label(make_pairs(indices), feedback, constitution, settings))
    metrics = write_label_outputs(labels, out / "data")
    if metrics["preference_pairs"] == 0:
        raise RuntimeError(f"no pair could be labelled ({metrics}); see {out / 'data' / 'labels.jsonl'}")
    stores = [store]
    if cfg.check is not None:
        check_pairs, a_better = known_pairs(load_preferences(cfg.check))
        check_store = PartStore(out / "parts-check", resume_key(key, file_fingerprint(cfg.check)), len(check_pairs),
                                cfg.batch_size)
        checked = check_store.run(lambda idx: label([check_pairs[i] for i in idx], feedback, constitution, settings))
        write_jsonl(out / "data" / "check_labels.jsonl", [{**r, "a_better": t} for r, t in zip(checked, a_better)])
        metrics["check"] = check_figures(checked, a_better)
        stores.append(check_store)
    result = finish(out, cfg, {**metrics, "batches_resumed": store.resumed_batches})
    for done in stores:
        done.remove()
    return result
