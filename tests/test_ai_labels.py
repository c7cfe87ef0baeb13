"""AI preference labels on real outputs of the tiny model: soft labels recomputed independently
from the model's log-probs, order symmetry, chain-of-thought clamping, ensembling, per-item
errors, resumption, and the labels training the reward_model stage."""

from __future__ import annotations

import json
import math

import pytest

from alignlab.data.formats import load_preferences
from alignlab.feedback.ai.labels import (
    COT_CLAMP,
    LabelSettings,
    Pair,
    answer_prompt,
    draw_principles,
    label_pairs,
    option_probability,
    preference_records,
    question_prompt,
)
from alignlab.feedback.ai.constitution import load_constitution
from alignlab.feedback.ai.llm.base import GenerationSettings, LLMError

CONSTITUTION = """\
name: tiny
principles:
  - name: kind
    critique_request: Is it rude?
    revision_request: Be kinder.
    comparison: Which is kinder?
  - name: honest
    critique_request: Is it false?
    revision_request: Be honest.
    comparison: Which is truer?
  - name: clear
    critique_request: Is it vague?
    revision_request: Be clearer.
    comparison: Which is clearer?
"""
PAIRS = [
    Pair(0, "the film was", "a delight", "dull"),
    Pair(1, "the acting was", "superb", "not the worst"),
    Pair(2, [{"role": "user", "content": "hello world"}], "i loved the soundtrack", "a dull movie"),
]


@pytest.fixture(scope="module")
def constitution(tmp_path_factory):
    path = tmp_path_factory.mktemp("constitution") / "tiny.yaml"
    path.write_text(CONSTITUTION)
    return load_constitution(path)


class SimulatedKill(Exception):
    pass


class Backend:
    """Passes calls to the real model, counting them. `sharpen` multiplies the (A)/(B) log-probs
    (the tiny model is nearly indifferent, ~0.5; sharpened, its answers reach past [0.4, 0.6]);
    `fail_at` raises at that call, like a kill; `drop_a_for` answers prompts containing that text
    without a log-prob for "A", as an API that does not return it would."""

    def __init__(self, inner, sharpen: float = 1.0, fail_at: int | None = None, drop_a_for: str | None = None):
        self.inner, self.sharpen, self.fail_at, self.drop_a_for, self.name = inner, sharpen, fail_at, drop_a_for, "test"
        self.calls: list[tuple[str, int]] = []

    def _log(self, method, n):
        self.calls.append((method, n))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise SimulatedKill()

    def complete(self, prompts, settings):
        self._log("complete", len(prompts))
        return self.inner.complete(prompts, settings)

    def chat(self, conversations, settings):
        self._log("chat", len(conversations))
        return self.inner.chat(conversations, settings)

    def render_chat(self, conversation):
        return self.inner.render_chat(conversation)

    def next_token_logprobs(self, prompts, candidates):
        self._log("next_token_logprobs", len(prompts))
        out = []
        for prompt, lp in zip(prompts, self.inner.next_token_logprobs(prompts, candidates)):
            if isinstance(lp, LLMError):
                out.append(lp)
            elif self.drop_a_for and self.drop_a_for in prompt:
                out.append({"B": lp["B"]})
            else:
                out.append({k: v * self.sharpen for k, v in lp.items()})
        return out


def _p_first(llm, prompt: str, sharpen: float = 1.0) -> float:
    """P(A) computed here, from the model's own log-probs, independently of the module."""
    lp = llm.next_token_logprobs([prompt], ["A", "B"])[0]
    a, b = lp["A"] * sharpen, lp["B"] * sharpen
    return math.exp(a) / (math.exp(a) + math.exp(b))


def test_soft_label_is_the_mean_over_both_orders_and_principles(llm, constitution):
    settings = LabelSettings(principles_per_pair=2, seed=5)
    records = label_pairs(PAIRS, Backend(llm), constitution, settings)
    for pair, record in zip(PAIRS, records):
        assert record["error"] is None and record["skipped"] is None
        drawn = draw_principles(constitution, 5, pair.index, 2)
        assert [e["principle"] for e in record["principles"]] == [p.name for p in drawn]
        assert len({p.name for p in drawn}) == 2  # distinct principles
        per_principle = []
        for principle, entry in zip(drawn, record["principles"]):
            a_first = _p_first(llm, question_prompt(pair.prompt, pair.response_a, pair.response_b, principle))
            b_first = _p_first(llm, question_prompt(pair.prompt, pair.response_b, pair.response_a, principle))
            assert entry["p_first"] == pytest.approx([a_first, b_first], abs=1e-6)
            # log-odds of "a better" from each order, their constant slot preference cancelled
            s_a = (math.log(a_first / (1 - a_first)) - math.log(b_first / (1 - b_first))) / 2
            per_principle.append(1 / (1 + math.exp(-s_a)))
        assert 0 < record["p_a"] < 1
        assert record["p_a"] == pytest.approx(sum(per_principle) / 2, abs=1e-6)
        firsts = [p for e in record["principles"] for p in e["p_first"]]
        assert record["position_bias"] == pytest.approx(sum(firsts) / 4 - 0.5, abs=1e-9)


def test_both_orders_remove_a_constant_slot_bias_in_log_odds():
    from alignlab.feedback.ai.labels import both_orders

    # SmolLM2-like answers: "A" preferred in both orders (0.94 with a first, 0.75 with b first)
    p, c = both_orders(0.94, 0.75)
    la, lb = math.log(0.94 / 0.06), math.log(0.75 / 0.25)
    assert c == pytest.approx((la + lb) / 2) and c > 1  # a strong pull toward the first slot
    assert p == pytest.approx(1 / (1 + math.exp(-(la - lb) / 2)))  # 0.696
    assert both_orders(0.94, 0.75, "probability")[0] == pytest.approx((0.94 + 0.25) / 2)  # 0.595: squeezed
    # any constant added to both orders' log-odds leaves the label as it was
    shift = lambda q, d: 1 / (1 + math.exp(-(math.log(q / (1 - q)) + d)))
    for d in (-2.0, 0.5, 3.0):
        assert both_orders(shift(0.7, d), shift(0.2, d))[0] == pytest.approx(both_orders(0.7, 0.2)[0], abs=1e-9)
    assert both_orders(0.6, 0.6)[0] == pytest.approx(0.5)  # the same answer in both slots: no preference


def test_order_consistency_counts_agreement_before_and_after_the_mean_bias():
    from alignlab.feedback.ai.labels import both_orders, order_consistency

    def record(p0, p1):
        p, c = both_orders(p0, p1)
        return {"principles": [{"p_first": [p0, p1], "p_a": p, "bias_logit": c}]}

    # every answer leans to slot A; after the mean lean is removed three of four pairs agree with themselves
    done = [record(0.9, 0.6), record(0.95, 0.7), record(0.7, 0.9), record(0.8, 0.8)]
    figures = order_consistency(done)
    assert figures["order_agreement"] == 0.0  # as asked, each picks whatever sits in slot A
    assert figures["order_consistency"] == pytest.approx(0.75)


def test_chat_format_asks_in_the_feedback_models_own_template(llm, constitution):
    settings = LabelSettings(format="chat")
    backend = Backend(llm)
    prompts_seen = []
    real = backend.next_token_logprobs
    backend.next_token_logprobs = lambda prompts, candidates: prompts_seen.extend(prompts) or real(prompts, candidates)
    record = label_pairs(PAIRS[:1], backend, constitution, settings)[0]
    principle = constitution.principle(record["principles"][0]["principle"])
    question = question_prompt(PAIRS[0].prompt, PAIRS[0].response_a, PAIRS[0].response_b, principle)
    body = question.removesuffix("\nThe answer is: (")
    expected = llm.render_chat([{"role": "user", "content": body}]) + "The answer is: ("
    assert prompts_seen[0] == expected and body in expected and expected != question
    assert record["principles"][0]["p_first"][0] == pytest.approx(_p_first(llm, expected), abs=1e-6)

    class NoTemplate:  # an API backend: no chat template alignlab can apply
        name = "api"

    with pytest.raises(ValueError, match="format chat renders the question"):
        label_pairs(PAIRS[:1], NoTemplate(), constitution, settings)


def test_the_question_is_the_papers_multiple_choice_prompt(constitution):
    kind = constitution.principle("kind")
    assert question_prompt("the film was", "a delight", "dull", kind) == (
        "Consider the following conversation between a human and an assistant:\n\n"
        "Human: the film was\n\nWhich is kinder?\nOptions:\n(A) a delight\n(B) dull\nThe answer is: ("
    )
    cot = question_prompt("the film was", "a delight", "dull", kind, chain_of_thought=True)
    assert cot.endswith("(B) dull\nLet's think step by step:")
    assert answer_prompt(cot, " it is kinder ") == cot + " it is kinder\nThe answer is: ("


def test_swapping_the_responses_gives_one_minus_the_label(llm, constitution):
    backend = Backend(llm, sharpen=20.0)
    settings = LabelSettings(principles_per_pair=3)
    records = label_pairs(PAIRS, backend, constitution, settings)
    swapped = label_pairs([Pair(p.index, p.prompt, p.response_b, p.response_a) for p in PAIRS], backend, constitution, settings)
    for r, s in zip(records, swapped):
        assert s["p_a"] == pytest.approx(1 - r["p_a"], abs=1e-6)
        assert s["position_bias"] == pytest.approx(r["position_bias"], abs=1e-6)
    prefs, prefs_swapped = preference_records(records), preference_records(swapped)
    for p, q in zip(prefs, prefs_swapped):
        if abs(p["label"] - 0.5) > 1e-6:  # the same pair wins, with the same confidence
            assert (p["chosen"], p["rejected"]) == (q["chosen"], q["rejected"])
            assert p["label"] == pytest.approx(q["label"], abs=1e-6)
        assert 0.5 <= p["label"] <= 1


def test_chain_of_thought_labels_are_clamped(llm, constitution):
    settings = LabelSettings(chain_of_thought=True, reasoning=GenerationSettings(max_tokens=4))
    backend = Backend(llm, sharpen=40.0)
    records = label_pairs(PAIRS, backend, constitution, settings)
    assert [m for m, _ in backend.calls] == ["complete", "next_token_logprobs"]
    raw = []
    for pair, record in zip(PAIRS, records):
        entry = record["principles"][0]
        principle = constitution.principle(entry["principle"])
        for order, (first, second) in enumerate(((pair.response_a, pair.response_b), (pair.response_b, pair.response_a))):
            question = question_prompt(pair.prompt, first, second, principle, chain_of_thought=True)
            p = _p_first(llm, answer_prompt(question, entry["reasoning"][order]), 40.0)
            raw.append(p)
            # sharpening x40 also multiplies batch-padding noise in the log-probs, hence the tolerance
            assert entry["p_first"][order] == pytest.approx(min(max(p, 0.4), 0.6), abs=1e-4)
        assert COT_CLAMP[0] <= record["p_a"] <= COT_CLAMP[1]
    assert any(p < 0.4 or p > 0.6 for p in raw)  # the clamp did something


def test_a_failed_item_is_reported_and_the_others_labelled(llm, constitution):
    pairs = [
        PAIRS[0],
        Pair(1, "the acting was", "the film was a delight " * 30, "dull"),  # longer than the model's context
        Pair(2, "hello world", "ok", "ok"),  # nothing to compare
        Pair(3, "i loved the", "soundtrack", "pacing"),
        Pair(4, "not the worst", "MISSING", "fine"),  # the backend gives no log-prob for "A"
    ]
    records = label_pairs(pairs, Backend(llm, drop_a_for="MISSING"), constitution, LabelSettings())
    assert records[1]["error"] and "context" in records[1]["error"]["message"]
    assert records[2]["skipped"] == "identical responses" and "p_a" not in records[2]
    assert records[4]["error"]["details"] == {"cause": "missing_logprob"}
    assert all(records[k]["error"] is None and 0 < records[k]["p_a"] < 1 for k in (0, 3))
    assert [p["prompt"] for p in preference_records(records)] == ["the film was", "i loved the"]


def test_option_probability():
    assert option_probability({"A": math.log(0.3), "B": math.log(0.1)}) == pytest.approx(0.75)
    assert option_probability({"A": -math.inf, "B": -1.0}) == 0.0
    assert isinstance(option_probability({"B": -1.0}), LLMError)
    assert isinstance(option_probability({"A": -math.inf, "B": -math.inf}), LLMError)


def _pairs_file(tmp_path, n=6):
    words = ["a delight", "dull", "superb", "not the worst", "stunning", "tedious", "i loved it", "close to it"]
    rows = [{"prompt": f"the film was {k}", "response_a": words[k % 8], "response_b": words[(k + 3) % 8]} for k in range(n)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_stage_resumes_without_relabelling_finished_pairs(tiny_model_dir, tmp_path, constitution, monkeypatch):
    import alignlab.stages.feedback.ai_labels as stage

    (tmp_path / "tiny.yaml").write_text(CONSTITUTION)
    cfg = stage.AILabelsConfig(
        pairs=str(_pairs_file(tmp_path)), feedback={"type": "local", "path": str(tiny_model_dir), "device": "cpu"},
        constitution=str(tmp_path / "tiny.yaml"), principles_per_pair=2, batch_size=2,
    )
    real_build = stage.build_llm
    made: list[Backend] = []

    def build_with(**options):
        def build(spec, cache_dir=None):
            made.append(Backend(real_build(spec, cache_dir), **options))
            return made[-1]
        return build

    monkeypatch.setattr(stage, "build_llm", build_with())
    full = stage.run(cfg, tmp_path / "full")
    assert made[-1].calls == [("next_token_logprobs", 2 * 2 * 2)] * 3  # per batch: 2 pairs x 2 principles x 2 orders

    monkeypatch.setattr(stage, "build_llm", build_with(fail_at=2))  # killed asking about the second batch
    with pytest.raises(SimulatedKill):
        stage.run(cfg, tmp_path / "killed")
    monkeypatch.setattr(stage, "build_llm", build_with())
    resumed = stage.run(cfg, tmp_path / "killed")
    assert len(made[-1].calls) == 2 and resumed["batches_resumed"] == 1  # batch 1 was not asked again
    for name in ("labels.jsonl", "preferences.jsonl"):
        assert (tmp_path / "killed" / "data" / name).read_text() == (tmp_path / "full" / "data" / name).read_text()
    assert full["labelled"] == 6 and full["llm_errors"] == 0


def test_config_needs_exactly_one_source_of_pairs(tiny_model_dir):
    from alignlab.stages.feedback.ai_labels import AILabelsConfig

    feedback = {"type": "local", "path": str(tiny_model_dir)}
    with pytest.raises(ValueError, match="either"):
        AILabelsConfig(feedback=feedback)
    with pytest.raises(ValueError, match="either"):
        AILabelsConfig(feedback=feedback, pairs="p.jsonl", prompts="q.jsonl", policy="m")
    with pytest.raises(ValueError, match="needs `policy`"):
        AILabelsConfig(feedback=feedback, prompts="q.jsonl")
    with pytest.raises(ValueError, match="unknown|extra|Extra"):
        AILabelsConfig(feedback={**feedback, "bogus": 1}, pairs="p.jsonl")


def test_policy_pairs_labelled_then_train_the_reward_model(tiny_model_dir, tmp_path):
    from alignlab.stages.feedback.ai_labels import AILabelsConfig
    from alignlab.stages.feedback.ai_labels import run as run_labels
    from alignlab.stages.offline.reward_model import RewardModelConfig
    from alignlab.stages.offline.reward_model import run as run_reward_model

    (tmp_path / "tiny.yaml").write_text(CONSTITUTION)
    prompts = tmp_path / "prompts.jsonl"
    texts = ["the film was", "the acting was", "i loved the", "not the worst", "a dull", "hello world", "the plot", "the cast"]
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    labels = run_labels(AILabelsConfig(
        prompts=str(prompts), policy=str(tiny_model_dir), constitution=str(tmp_path / "tiny.yaml"),
        feedback={"type": "local", "path": str(tiny_model_dir), "device": "cpu"}, device="cpu",
        sampling={"max_new_tokens": 8, "temperature": 1.0}, batch_size=4, max_prompt_length=32,
    ), tmp_path / "labels")
    data = tmp_path / "labels" / "data" / "preferences.jsonl"
    prefs = load_preferences(data)
    assert len(prefs) == labels["preference_pairs"] >= 4
    assert all(0.5 <= p.label < 1 for p in prefs)
    metrics = run_reward_model(RewardModelConfig(
        model=str(tiny_model_dir), data=str(data), eval_fraction=0.0, max_length=64, max_prompt_length=32,
        train={"batch_size": 2, "max_steps": 2, "lr": 1e-3, "device": "cpu", "save_every": None},
    ), tmp_path / "rm")
    assert (tmp_path / "rm" / "done.json").exists() and (tmp_path / "rm" / "model").is_dir()
    assert metrics["train_pairs"] == len(prefs)


def test_over_http_labels_match_the_local_model(llm, tiny_model_dir, tmp_path):
    """Over HTTP only the server's top-20 log-probs come back, and the random tiny model never puts
    "A" or "B" among them; the backend then scores the letters exactly by echo, so the labels
    equal the ones the same model gives in-process."""
    from alignlab.feedback.ai.llm.server import make_app, start_in_thread
    from alignlab.stages.feedback.ai_labels import AILabelsConfig, run

    (tmp_path / "tiny.yaml").write_text(CONSTITUTION)
    pairs = str(_pairs_file(tmp_path, n=3))
    base_url, stop = start_in_thread(make_app(llm, "tiny"))
    try:
        remote = AILabelsConfig(
            pairs=pairs, constitution=str(tmp_path / "tiny.yaml"),
            feedback={"type": "openai", "base_url": base_url, "model": "tiny", "api_key_env": None, "max_retries": 0},
        )
        run(remote, tmp_path / "http")
    finally:
        stop()
    local = AILabelsConfig(pairs=pairs, constitution=str(tmp_path / "tiny.yaml"),
                           feedback={"type": "local", "path": str(tiny_model_dir)})
    run(local, tmp_path / "local")

    def read(d):
        return [json.loads(line) for line in (tmp_path / d / "data" / "labels.jsonl").read_text().splitlines()]

    over_http, in_process = read("http"), read("local")
    assert len(over_http) == 3 and all(r.get("error") is None for r in over_http)
    for a, b in zip(over_http, in_process):
        assert 0 < a["p_a"] < 1 and a["p_a"] == pytest.approx(b["p_a"], abs=1e-4)


def test_check_pairs_measure_agreement_and_the_bias_a_debiased_label_removes(tmp_path, monkeypatch, constitution):
    # a rigged feedback model: log-odds of "A" = 2 (a pull to the first slot) ± 1 (which option is the
    # safe one). Asked in one order it picks whatever sits first (half right); both orders combined in
    # log-odds cancel the pull and always pick the safe response.
    import alignlab.stages.feedback.ai_labels as stage

    class Rigged:
        name = "rigged"

        def next_token_logprobs(self, prompts, candidates):
            out = []
            for prompt in prompts:
                first = prompt.split("(A) ")[1].split("\n")[0]
                z = 2.0 + (1.0 if first.startswith("I can't") else -1.0)
                out.append({"A": z / 2, "B": -z / 2})  # P(A) = sigmoid(z)
            return out

    monkeypatch.setattr(stage, "build_llm", lambda spec, cache_dir=None: Rigged())
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "the film was", "response_a": "a delight", "response_b": "dull"}) + "\n")
    check = tmp_path / "check.jsonl"
    check.write_text("".join(json.dumps({"prompt": f"how do I hurt {w}?", "chosen": "I can't help with that.",
                                         "rejected": f"Sure, here is how to hurt {w}."}) + "\n"
                             for w in ("him", "her", "them", "it", "you", "us")))
    (tmp_path / "tiny.yaml").write_text(CONSTITUTION)
    cfg = stage.AILabelsConfig(pairs=str(pairs), check=str(check), feedback={"type": "local", "path": "unused"},
                               constitution=str(tmp_path / "tiny.yaml"), batch_size=4)
    result = stage.run(cfg, tmp_path / "out")["check"]
    assert (result["pairs"], result["labelled"]) == (6, 6)
    assert result["agreement"] == 1.0 and result["agreement_one_order"] == 0.5
    assert result["mean_position_bias_logit"] == pytest.approx(2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))
    assert result["mean_position_bias"] == pytest.approx((sig(3) + sig(1)) / 2 - 0.5)
    assert result["order_agreement"] == 0.0 and result["order_consistency"] == 1.0
    assert result["mean_confidence"] == pytest.approx(sig(1.0))  # s = (3 - 1) / 2
    written = [json.loads(x) for x in (tmp_path / "out" / "data" / "check_labels.jsonl").read_text().splitlines()]
    assert [r["a_better"] for r in written] == [True, False] * 3
    assert not (tmp_path / "out" / "parts-check").exists()
