"""Contrast labels (a principle's follow/violate personas scoring each response alone): the label
against its closed form on a scripted backend, the prompts it scores, symmetry, errors, the tiny
model's own log-probs recomputed independently, and the stage's settings and check figures."""

from __future__ import annotations

import json
import math

import pytest

from alignlab.feedback.ai.constitution import load_constitution
from alignlab.feedback.ai.contrast_labels import contrast_rate, label_pairs_by_contrast, persona_prefix
from alignlab.feedback.ai.labels import LabelSettings, Pair
from alignlab.feedback.ai.llm.base import LLMError
from alignlab.feedback.judgement import sigmoid

CONSTITUTION = """\
name: tiny
principles:
  - name: kind
    critique_request: Is it rude?
    revision_request: Be kinder.
    comparison: Which is kinder?
    follow: Always be kind to people.
    violate: Always be rude to people.
  - name: honest
    critique_request: Is it false?
    revision_request: Be honest.
    comparison: Which is truer?
    follow: Always tell the truth.
    violate: Always tell lies please.
"""


@pytest.fixture()
def constitution(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONSTITUTION)
    return load_constitution(path)


class Scripted:
    """log p(candidate | prefix) from a table keyed by (persona in the prefix, candidate); records prompts."""

    name = "scripted"

    def __init__(self, table: dict, fail_for: str | None = None):
        self.table, self.fail_for, self.asked = table, fail_for, []

    def next_token_logprobs(self, prompts, candidates):
        self.asked.append((list(prompts), list(candidates)))
        out = []
        for prompt in prompts:
            if self.fail_for and self.fail_for in prompt:
                out.append(LLMError("server said no", details={"status": 503}))
                continue
            persona = "follow" if prompt.startswith("Always be kind") or prompt.startswith("Always tell the truth") else "violate"
            out.append({c: self.table[persona, c.strip()] for c in candidates})
        return out


def test_label_is_the_sigmoid_of_the_difference_of_per_character_rates(constitution):
    a, b = "thank you", "go away!!"  # 9 characters each
    table = {("follow", a): -10.0, ("violate", a): -19.0, ("follow", b): -12.0, ("violate", b): -12.9}
    backend = Scripted(table)
    settings = LabelSettings(method="contrast", contrast_scale=2.0)
    only_kind = constitution.model_copy(update={"principles": constitution.principles[:1]})
    record = label_pairs_by_contrast([Pair(0, "hello", a, b)], backend, only_kind, settings)[0]
    d_a, d_b = (-10.0 + 19.0) / 9, (-12.0 + 12.9) / 9  # 1.0 and 0.1 nats per character
    assert record["principles"][0]["contrast"] == pytest.approx([d_a, d_b])
    assert record["p_a"] == pytest.approx(1 / (1 + math.exp(-2.0 * (d_a - d_b))))
    assert record["position_bias"] == 0.0 and record["error"] is None
    # one call per principle: both personas' prompts, both responses (after "Assistant:" with a space)
    (prompts, candidates), = backend.asked
    assert prompts == ["Always be kind to people.\n\nHuman: hello\n\nAssistant:",
                       "Always be rude to people.\n\nHuman: hello\n\nAssistant:"]
    assert candidates == [" thank you", " go away!!"]


def test_swapping_the_responses_gives_the_complementary_label(constitution):
    table = {("follow", "x y"): -3.0, ("violate", "x y"): -4.0, ("follow", "z"): -2.0, ("violate", "z"): -1.5}
    settings = LabelSettings(method="contrast", principles_per_pair=2)
    forward = label_pairs_by_contrast([Pair(3, "p", "x y", "z")], Scripted(table), constitution, settings)[0]
    backward = label_pairs_by_contrast([Pair(3, "p", "z", "x y")], Scripted(table), constitution, settings)[0]
    assert forward["p_a"] == pytest.approx(1 - backward["p_a"])
    assert len(forward["principles"]) == 2  # the mean over both drawn principles
    assert forward["p_a"] == pytest.approx(sum(e["p_a"] for e in forward["principles"]) / 2)


def test_skips_and_errors_are_recorded_per_pair(constitution):
    table = {("follow", "a"): -1.0, ("violate", "a"): -2.0, ("follow", "b"): -1.0, ("violate", "b"): -1.0}
    pairs = [Pair(0, "p", "a", "a"), Pair(1, "p", "", "b"), Pair(2, "p BROKEN", "a", "b"), Pair(3, "p", "a", "b")]
    records = label_pairs_by_contrast(pairs, Scripted(table, fail_for="BROKEN"), constitution, LabelSettings(method="contrast"))
    assert [r["skipped"] for r in records] == ["identical responses", "empty response", None, None]
    assert records[2]["error"]["details"] == {"status": 503} and "p_a" not in records[2]
    assert records[3]["p_a"] > 0.5  # a is likelier under the follower, b is not


def test_a_constitution_without_personas_is_refused_naming_the_principles(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text(CONSTITUTION.replace("    follow: Always tell the truth.\n", ""))
    with pytest.raises(ValueError, match="lacks them on: honest"):
        label_pairs_by_contrast([Pair(0, "p", "a", "b")], Scripted({}), load_constitution(path), LabelSettings(method="contrast"))


def test_rates_match_the_tiny_models_own_log_probs(tiny_model_dir, constitution):
    from alignlab.feedback.ai.llm.local import LocalLLM

    llm = LocalLLM(tiny_model_dir, device="cpu")
    pair = Pair(0, [{"role": "user", "content": "the film was"}], "a delight", "dull and long")
    for format in ("completion", "chat"):
        settings = LabelSettings(method="contrast", format=format)
        entry = label_pairs_by_contrast([pair], llm, constitution, settings)[0]["principles"][0]
        principle = constitution.principle(entry["principle"])
        lead = " " if format == "completion" else ""
        expected = []
        for text in ("a delight", "dull and long"):
            totals = []
            for persona in (principle.follow, principle.violate):
                prefix = persona_prefix(persona, pair.prompt, llm, format)
                # independently: the log-probs of the whole text, summed over the tokens after the prefix
                ids, logps = llm.prompt_logprobs(prefix + lead + text)
                n_prefix = len(llm.encode(prefix))
                assert ids[:n_prefix] == llm.encode(prefix)  # the response's tokens start where the prefix ends
                totals.append(sum(logps[n_prefix:]))
            expected.append(contrast_rate(*totals, text))
        assert entry["contrast"] == pytest.approx(expected, abs=1e-4)  # float32 forwards of different batch shapes
        scale = settings.contrast_scale  # the label is sigmoid(scale * d): the rates' tolerance times its slope bound
        assert entry["p_a"] == pytest.approx(sigmoid(scale * (expected[0] - expected[1])), abs=scale * 1e-4)


def test_stage_restricts_principles_and_reports_check_agreement(tiny_model_dir, tmp_path):
    from alignlab.stages.feedback.ai_labels import AILabelsConfig, run, selected_constitution

    (tmp_path / "tiny.yaml").write_text(CONSTITUTION)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"the film was {k}", "response_a": "great", "response_b": "awful"}) + "\n"
                             for k in range(3)))
    check = tmp_path / "check.jsonl"
    check.write_text("".join(json.dumps({"prompt": "the film was", "chosen": c, "rejected": r}) + "\n"
                             for c, r in [("great", "awful"), ("fine", "bad"), ("lovely", "boring"), ("good", "dull")]))
    feedback = {"type": "local", "path": str(tiny_model_dir), "device": "cpu"}
    cfg = AILabelsConfig(pairs=str(pairs), check=str(check), feedback=feedback, constitution=str(tmp_path / "tiny.yaml"),
                         method="contrast", principles=["honest"])
    assert [p.name for p in selected_constitution(cfg).principles] == ["honest"]
    metrics = run(cfg, tmp_path / "out")
    labels = [json.loads(line) for line in (tmp_path / "out" / "data" / "labels.jsonl").read_text().splitlines()]
    assert {e["principle"] for r in labels for e in r["principles"]} == {"honest"}
    checked = [json.loads(line) for line in (tmp_path / "out" / "data" / "check_labels.jsonl").read_text().splitlines()]
    agree = sum((r["p_a"] > 0.5) == r["a_better"] for r in checked)
    assert metrics["check"]["agreement"] == agree / 4
    assert metrics["check"]["order_consistency"] is None and metrics["check"]["agreement_one_order"] is None
    assert metrics["mean_position_bias"] == 0.0
    with pytest.raises(ValueError, match="principles: kindness not in constitution 'tiny'"):
        selected_constitution(cfg.model_copy(update={"principles": ["kindness"]}))
