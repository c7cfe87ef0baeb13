"""SL-CAI on real (gibberish) outputs of the tiny model: chain structure, prompt format, seeded
principle draws, per-item errors, the stage's files, and resumption after a kill."""

from __future__ import annotations

import json

import pytest

from alignlab.data.formats import load_preferences, load_sft
from alignlab.feedback.ai.cai import (
    STOP_STRINGS,
    CritiquePrompts,
    CritiqueSettings,
    PartStore,
    ResumeMismatchError,
    clean_answer,
    critique_and_revise,
    draw_principle,
)
from alignlab.feedback.ai.cai_outputs import cai_datasets
from alignlab.feedback.ai.constitution import load_constitution
from alignlab.feedback.ai.llm.base import GenerationSettings, LLMError

# Short requests: the tiny model's context is 256 tokens and its tokenizer splits unseen words
# into bytes, so a few-shot example plus a chain must stay small.
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
examples:
  - prompt: hi
    response: go
    principle: kind
    critique: rude
    revision: hello
"""
PROMPTS = ["the film was", "the acting was", "i loved the", "hello world", "not the worst", "a dull"]
GEN = GenerationSettings(max_tokens=6)


@pytest.fixture(scope="module")
def constitution(tmp_path_factory):
    path = tmp_path_factory.mktemp("constitution") / "tiny.yaml"
    path.write_text(CONSTITUTION)
    return load_constitution(path)


class SimulatedKill(Exception):
    pass


class Recording:
    """A backend passing calls through to a real one, keeping what was asked and counting calls;
    `fail_at` makes the n-th call raise, like a process killed in the middle of a run."""

    def __init__(self, inner, fail_at: int | None = None):
        self.inner, self.fail_at, self.name = inner, fail_at, "recording"
        self.calls: list[tuple[str, list]] = []

    def _log(self, method, items):
        self.calls.append((method, list(items)))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise SimulatedKill(f"killed at call {self.fail_at}")

    def complete(self, prompts, settings):
        self._log("complete", prompts)
        return self.inner.complete(prompts, settings)

    def chat(self, conversations, settings):
        self._log("chat", conversations)
        return self.inner.chat(conversations, settings)

    def next_token_logprobs(self, prompts, candidates):
        self._log("next_token_logprobs", prompts)
        return self.inner.next_token_logprobs(prompts, candidates)


def _initial(llm):
    return llm.complete(PROMPTS, GenerationSettings(max_tokens=6, temperature=1.0, seed=3))


def test_chain_has_one_critique_and_revision_per_round_from_the_model(llm, constitution):
    initial = _initial(llm)
    backend = Recording(llm)
    settings = CritiqueSettings(rounds=3, few_shot=0, generation=GEN, seed=7)  # three rounds would not fit with one
    chains = critique_and_revise(range(len(PROMPTS)), PROMPTS, initial, backend, constitution, settings)

    assert [c["index"] for c in chains] == list(range(len(PROMPTS)))
    assert [m for m, _ in backend.calls] == ["complete"] * 6  # one batched call per request and round
    builder = CritiquePrompts(constitution, "completion", few_shot=0)
    for chain, first in zip(chains, initial):
        assert chain["error"] is None and chain["initial"] == first
        assert [r["round"] for r in chain["rounds"]] == [1, 2, 3]
        for r in chain["rounds"]:
            assert r["principle"] == draw_principle(constitution, 7, chain["index"], r["round"]).name
            assert isinstance(r["critique"], str) and isinstance(r["revision"], str)
        assert chain["final"] == chain["rounds"][-1]["revision"]
    # each round critiques the previous round's revision, and the prompts sent are the builder's
    chain = chains[2]
    for k, r in enumerate(chain["rounds"]):
        response = chain["initial"] if k == 0 else chain["rounds"][k - 1]["revision"]
        principle = constitution.principle(r["principle"])
        critique_prompt = builder.critique(chain["prompt"], response, principle)
        revision_prompt = builder.revision(chain["prompt"], response, principle, r["critique"])
        assert backend.calls[2 * k][1][2] == critique_prompt
        assert backend.calls[2 * k + 1][1][2] == revision_prompt
        # the recorded texts are exactly the model's answers to those prompts (cut at stop strings)
        again = llm.complete([critique_prompt, revision_prompt], GenerationSettings(max_tokens=6, stop=STOP_STRINGS))
        assert [r["critique"], r["revision"]] == [clean_answer(a) for a in again]


def test_prompt_format_is_the_papers_with_few_shot_examples_first(llm, constitution):
    builder = CritiquePrompts(constitution, "completion")
    kind = constitution.principle("kind")
    critique = builder.critique("the film was", "dull", kind)
    example = (
        "Human: hi\n\nAssistant: go\n\nCritiqueRequest: Is it rude?\n\nCritique: rude"
        "\n\nRevisionRequest: Be kinder.\n\nRevision: hello"
    )
    assert critique == example + "\n\n-----\n\n" + (
        "Human: the film was\n\nAssistant: dull\n\nCritiqueRequest: Is it rude?\n\nCritique:"
    )
    assert builder.revision("the film was", "dull", kind, " mean ") == critique + (
        " mean\n\nRevisionRequest: Be kinder.\n\nRevision:"
    )
    assert not CritiquePrompts(constitution, few_shot=0).critique("x", "y", kind).startswith("Human: hi")
    conversation = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    assert CritiquePrompts(constitution, few_shot=0).critique(conversation, "yo", kind).startswith(
        "System: be nice\n\nHuman: hi\n\nAssistant: yo\n\nCritiqueRequest:"
    )
    # a real round with the example in front of each request
    backend = Recording(llm)
    chains = critique_and_revise([0, 1], PROMPTS[:2], ["dull", "fine"], backend, constitution, CritiqueSettings(generation=GEN))
    assert all(c["error"] is None for c in chains)
    assert all(p.startswith(example + "\n\n-----\n\nHuman: the ") for _, prompts in backend.calls for p in prompts)
    chat = CritiquePrompts(constitution, "chat").revision("the film was", "dull", kind, "mean")
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert chat[-2:] == [{"role": "assistant", "content": "mean"}, {"role": "user", "content": "RevisionRequest: Be kinder."}]


def test_chat_format_goes_through_the_chat_call(llm, constitution):
    backend = Recording(llm)
    chains = critique_and_revise([0, 1], PROMPTS[:2], ["dull", "fine"], backend, constitution,
                                 CritiqueSettings(rounds=1, format="chat", generation=GEN))
    assert [m for m, _ in backend.calls] == ["chat", "chat"]
    assert all(c["error"] is None and isinstance(c["final"], str) for c in chains)


def test_principle_draw_is_seeded_per_prompt_and_round(constitution):
    draws = lambda seed: [draw_principle(constitution, seed, i, r).name for i in range(20) for r in (1, 2)]
    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    assert len(set(draws(0))) == 3  # every principle comes up


def test_an_llm_error_ends_only_its_own_chain(llm, constitution):
    # a prompt longer than the model's context: LocalLLM answers that item with an LLMError
    prompts = [PROMPTS[3], PROMPTS[0], "the film was a delight " * 60, PROMPTS[1]]
    initial = ["ok", LLMError("policy failed"), "dull", "fine"]
    chains = critique_and_revise(range(4), prompts, initial, llm, constitution, CritiqueSettings(rounds=2, generation=GEN))
    assert chains[1]["error"]["step"] == "initial" and chains[1]["rounds"] == []
    assert chains[2]["error"]["step"] == "critique" and chains[2]["error"]["round"] == 1
    assert "context" in chains[2]["error"]["message"] and chains[2]["final"] is None
    for k in (0, 3):
        assert chains[k]["error"] is None and len(chains[k]["rounds"]) == 2
    sft, _, counts = cai_datasets(chains, constitution)
    assert counts["failed"] == 2 and len(sft) <= 2


def _stage_config(tiny_model_dir, tmp_path, constitution_path, **overrides):
    from alignlab.stages.feedback.sl_cai import SLCAIConfig

    prompts = tmp_path / "red_team.jsonl"
    rows = [{"prompt": p} for p in PROMPTS[:4]] + [{"messages": [{"role": "user", "content": "hello world"}]}]
    # fits the policy's context, but not the feedback model's with a critique request around it
    rows.append({"prompt": "the film was a delight " * 15})
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {
        "policy": str(tiny_model_dir), "feedback": {"type": "local", "path": str(tiny_model_dir), "device": "cpu"},
        "prompts": str(prompts), "constitution": str(constitution_path), "rounds": 2, "few_shot": 0,
        "batch_size": 2, "device": "cpu", "sampling": {"max_new_tokens": 6, "temperature": 1.0},
        "generation": {"max_tokens": 6}, "max_prompt_length": 240,
    }
    return SLCAIConfig(**{**settings, **overrides})


@pytest.fixture
def constitution_path(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONSTITUTION)
    return path


def test_stage_writes_loadable_files_and_resumes_after_a_kill(tiny_model_dir, tmp_path, constitution_path, monkeypatch):
    import alignlab.stages.feedback.sl_cai as stage

    real_build = stage.build_llm
    backends: list[Recording] = []

    def recording_build(fail_at=None):
        def build(spec, cache_dir=None):
            backends.append(Recording(real_build(spec, cache_dir), fail_at))
            return backends[-1]
        return build

    cfg = _stage_config(tiny_model_dir, tmp_path, constitution_path)
    # uninterrupted run
    monkeypatch.setattr(stage, "build_llm", recording_build())
    metrics = stage.run(cfg, tmp_path / "full")
    data = tmp_path / "full" / "data"
    chains = [json.loads(line) for line in (data / "chains.jsonl").read_text().splitlines()]
    assert len(chains) == 6 and metrics["prompts"] == 6
    assert metrics["llm_errors"] == 1 and chains[5]["error"]["step"] == "critique"
    sft, prefs = load_sft(data / "sft.jsonl"), load_preferences(data / "preferences.jsonl")
    assert len(sft) == metrics["sft_examples"] >= 4
    assert len(prefs) == metrics["preference_pairs"] >= 1
    assert isinstance(sft[-1].prompt, list) and sft[-1].completion[0]["role"] == "assistant"
    assert (tmp_path / "full" / "done.json").exists() and not (tmp_path / "full" / "parts").exists()
    calls_full = len(backends[-1].calls)
    assert calls_full == 3 * 2 * 2  # 3 batches x 2 rounds x (critique, revision)

    # killed during the second batch (its first call), then run again
    out = tmp_path / "killed"
    monkeypatch.setattr(stage, "build_llm", recording_build(fail_at=5))
    with pytest.raises(SimulatedKill):
        stage.run(cfg, out)
    assert (out / "parts" / "part-000000.jsonl").exists() and not (out / "parts" / "part-000001.jsonl").exists()
    monkeypatch.setattr(stage, "build_llm", recording_build())
    resumed = stage.run(cfg, out)
    assert len(backends[-1].calls) == calls_full - 4  # the stored batch is not asked again
    assert resumed["batches_resumed"] == 1
    for name in ("chains.jsonl", "sft.jsonl", "preferences.jsonl"):
        assert (out / "data" / name).read_text() == (data / name).read_text()


def test_parts_of_another_run_are_not_mixed_in(tmp_path):
    assert PartStore(tmp_path, "key-1", 4, 2).run(lambda idx: [{"index": i} for i in idx]) == [{"index": i} for i in range(4)]
    with pytest.raises(ResumeMismatchError, match="delete"):
        PartStore(tmp_path, "key-2", 4, 2).run(lambda idx: [{"index": i} for i in idx])
    with pytest.raises(ResumeMismatchError):
        PartStore(tmp_path, "key-1", 4, 3).run(lambda idx: [{"index": i} for i in idx])


def test_stage_with_a_feedback_model_behind_an_openai_compatible_server(llm, tiny_model_dir, tmp_path, constitution_path):
    from alignlab.feedback.ai.llm.server import make_app, start_in_thread
    from alignlab.stages.feedback.sl_cai import run

    base_url, stop = start_in_thread(make_app(llm, "tiny"))
    try:
        feedback = {"type": "openai", "base_url": base_url, "model": "tiny", "api_key_env": None,
                    "max_retries": 0, "cache": "calls.sqlite"}
        metrics = run(_stage_config(tiny_model_dir, tmp_path, constitution_path, feedback=feedback), tmp_path / "http")
    finally:
        stop()
    assert metrics["prompts"] == 6 and metrics["llm_errors"] == 1  # the over-long prompt, answered 400 by the server
    assert len(load_sft(tmp_path / "http" / "data" / "sft.jsonl")) == metrics["sft_examples"] >= 4
    assert (tmp_path / "http" / "calls.sqlite").exists()  # a relative cache path lands in the stage directory
