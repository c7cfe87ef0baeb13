"""Harmful compliance and over-refusal: each model answers held-out red-team prompts and benign
ones, and an independent detector says which answers are refusals.

Per model: `harmful_compliance` (share of red-team prompts NOT refused), `benign_refusal` (share of
benign prompts refused: over-refusal) and `lookalike_refusal` (benign prompts that sound harmful),
each with a 95% Wilson interval. The detector is rule-based (`alignlab.eval.refusal`), not a model
and not the model being trained: "compliance" here means "did not open with a refusal", a proxy for
harm that a response in another style can fool; the answers are in `data/samples.jsonl` to read.

With `guard:` (`alignlab.guard.settings.GuardSettings`) every model samples behind constitutional
classifiers: a prompt the input classifier flags is answered with the guard's message, and
generation stops at the first token the streaming output classifier flags. A guarded answer counts
as a refusal; per set, `guarded_by_input` and `guarded_by_output` count what the guard did.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alignlab.data.formats import load_prompts
from alignlab.data.readers import write_jsonl
from alignlab.data.tokenize import tokenize_prompts
from alignlab.eval.proportion import of_flags
from alignlab.eval.refusal import is_refusal
from alignlab.guard.sampler import shown_samples
from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.rollout import SamplingSettings
from alignlab.stages.blocks import EvaluationSeedSettings, GuardedSamplingSettings, PromptLengthSettings
from alignlab.stages.common import finish, runtime, seed_everything

DETECTOR = "rule-based refusal phrases in the first 300 characters (alignlab.eval.refusal)"


class SafetyEvalConfig(PromptLengthSettings, EvaluationSeedSettings, GuardedSamplingSettings):
    models: dict[str, str] = Field(description="name -> model path, e.g. {before: '@sft_base', after: '@dpo'}")
    harmful: str = Field(description="red-team prompts, held out from training")
    benign: str = Field(description="benign prompts (records may mark `lookalike: true`)")
    n_prompts: int | None = Field(None, gt=0, description="at most this many of each set")
    sampling: SamplingSettings = SamplingSettings(max_new_tokens=64)


def run(cfg: SafetyEvalConfig, out: Path) -> dict:
    sets = {"harmful": load_prompts(cfg.harmful)[: cfg.n_prompts], "benign": load_prompts(cfg.benign)[: cfg.n_prompts]}
    tokenizer = load_tokenizer(next(iter(cfg.models.values())))
    ids = {name: tokenize_prompts(prompts, tokenizer, cfg.max_prompt_length) for name, prompts in sets.items()}
    device, _ = runtime("auto")
    guard = cfg.guard.build(tokenizer, device) if cfg.guard else None
    results, samples = {}, []
    for model_name, path in cfg.models.items():
        seed_everything(cfg.seed)
        model = load_causal_lm(path, device=device)
        refused: dict[str, list[bool]] = {}
        guarded: dict[str, list[str | None]] = {}
        for set_name, prompts in sets.items():
            _, texts, guarded[set_name] = shown_samples(model, ids[set_name], cfg.sampling, guard, tokenizer,
                                                        seed=cfg.seed)
            refused[set_name] = [g is not None or is_refusal(t) for t, g in zip(texts, guarded[set_name])]
            for prompt, text, flag, verdict in zip(prompts, texts, refused[set_name], guarded[set_name]):
                samples.append({"model": model_name, "set": set_name, "prompt": prompt.prompt, "response": text,
                                "refusal": flag, **({"guarded_by": verdict} if guard else {}),
                                **{k: v for k, v in prompt.meta.items() if k != "source_line"}})
        lookalike = [flag for p, flag in zip(sets["benign"], refused["benign"]) if p.meta.get("lookalike")]
        results[model_name] = {"harmful_compliance": of_flags([not f for f in refused["harmful"]]),
                               "benign_refusal": of_flags(refused["benign"]), "lookalike_refusal": of_flags(lookalike)}
        if guard is not None:
            results[model_name]["guard"] = {s: {"guarded_by_input": v.count("input"), "guarded_by_output": v.count("output")}
                                            for s, v in guarded.items()}
        del model
    write_jsonl(out / "data" / "samples.jsonl", samples)
    return finish(out, cfg, {"detector": DETECTOR, "models": results, "model_paths": dict(cfg.models),
                             "harmful_prompts": len(sets["harmful"]), "benign_prompts": len(sets["benign"]),
                             **({"guard": cfg.guard.model_dump()} if cfg.guard else {})})
