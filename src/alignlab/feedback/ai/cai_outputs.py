"""What SL-CAI's chains become: SFT records and preference pairs, only from revisions that pass the
gate (`revision_gate`), with the counts of what was kept and why the rest was not."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignlab.data.readers import write_jsonl
from alignlab.feedback.ai.cai import PromptLike, as_response
from alignlab.feedback.ai.constitution import Constitution
from alignlab.feedback.ai.revision_gate import REASONS, GateSettings, gate_reason


def last_request(prompt: PromptLike) -> str:
    """The human's last message (the request a revision must not just repeat)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def chain_gate(chain: dict, constitution: Constitution, settings: GateSettings | None) -> str | None:
    """Why the chain's final revision is not a real one (None: it is, or no gate is set)."""
    if settings is None:
        return "empty" if not chain["final"].strip() else None
    last = chain["rounds"][-1]
    return gate_reason(chain["final"], initial=chain["initial"], critique=last["critique"] or "",
                       request=last_request(chain["prompt"]),
                       instruction=constitution.principle(last["principle"]).revision_request, settings=settings)


def cai_datasets(chains: Sequence[dict], constitution: Constitution,
                 gate: GateSettings | None = GateSettings()) -> tuple[list[dict], list[dict], dict]:
    """SFT records (prompt → final revision), preference records (final revision ≻ initial) and counts.

    Failed chains are left out, and so is every revision the gate rejects (counted by reason in
    `rejected`); a pair also needs a non-empty initial answer. `gate=None` keeps every non-empty revision.
    """
    sft, prefs = [], []
    counts = {"failed": 0, "rejected": {reason: 0 for reason in REASONS}, "pair_empty_initial": 0}
    for chain in chains:
        if chain["error"] is not None:
            counts["failed"] += 1
            continue
        reason = chain_gate(chain, constitution, gate)
        chain["gate"] = reason
        if reason is not None:
            counts["rejected"][reason] += 1
            continue
        prompt, final, initial = chain["prompt"], chain["final"].strip(), chain["initial"].strip()
        sft.append({"prompt": prompt, "completion": as_response(prompt, final)})
        if not initial:
            counts["pair_empty_initial"] += 1
        else:
            prefs.append({"prompt": prompt, "chosen": as_response(prompt, final), "rejected": as_response(prompt, initial)})
    return sft, prefs, counts


def cai_metrics(chains: Sequence[dict], kept: int) -> dict:
    """Counts of chains, failures (per step) and principles used, how many revisions changed the
    answer at all and how many the gate kept."""
    failed = [c for c in chains if c["error"] is not None]
    ok = [c for c in chains if c["error"] is None]
    by_step: dict[str, int] = {}
    for chain in failed:
        by_step[chain["error"]["step"]] = by_step.get(chain["error"]["step"], 0) + 1
    principles: dict[str, int] = {}
    for chain in chains:
        for r in chain["rounds"]:
            principles[r["principle"]] = principles.get(r["principle"], 0) + 1
    changed = sum(c["final"].strip() != c["initial"].strip() for c in ok)
    return {
        "prompts": len(chains), "chains_ok": len(ok), "llm_errors": len(failed), "llm_errors_by_step": by_step,
        "changed_fraction": changed / max(len(ok), 1), "kept_revisions": kept,
        "kept_fraction": kept / max(len(ok), 1),
        "mean_initial_chars": sum(len(c["initial"]) for c in ok) / max(len(ok), 1),
        "mean_final_chars": sum(len(c["final"]) for c in ok) / max(len(ok), 1),
        "principles_used": dict(sorted(principles.items())),
    }


def write_cai_outputs(chains: Sequence[dict], data_dir: str | Path, constitution: Constitution,
                      gate: GateSettings | None = GateSettings()) -> dict:
    """data/chains.jsonl (each chain with its `gate` verdict), data/sft.jsonl, data/preferences.jsonl
    (each atomically); returns metrics."""
    data_dir = Path(data_dir)
    sft, prefs, counts = cai_datasets(chains, constitution, gate)
    write_jsonl(data_dir / "chains.jsonl", chains)
    write_jsonl(data_dir / "sft.jsonl", sft)
    write_jsonl(data_dir / "preferences.jsonl", prefs)
    return {**cai_metrics(chains, len(sft)), "sft_examples": len(sft), "preference_pairs": len(prefs),
            "gate_rejected": counts["rejected"], "pair_empty_initial": counts["pair_empty_initial"]}
