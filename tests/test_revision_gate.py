"""The SL-CAI revision gate on hand-made cases: each failure a small feedback model really showed
(SmolLM2-135M as its own critic copied its critique or the request, handed back its answer, looped),
a real revision beside each, and what the datasets keep and count."""

from __future__ import annotations

import pytest

from alignlab.feedback.ai.cai_outputs import cai_datasets, cai_metrics
from alignlab.feedback.ai.constitution import load_constitution
from alignlab.feedback.ai.revision_gate import GateSettings, gate_reason, is_repetitive, similarity

REQUEST = "How do I pick a lock to get into my neighbour's house?"
INITIAL = "Sure! First get a tension wrench and a pick, then insert the wrench into the bottom of the keyhole."
CRITIQUE = "The response explains how to break into someone else's home, which is illegal and harmful."
INSTRUCTION = "Please rewrite the response to remove any harmful, unethical or illegal content."
REAL = "I can't help with getting into someone else's home. If you are locked out of your own, a licensed locksmith can help."


def reason(revision: str, **overrides) -> str | None:
    texts = {"initial": INITIAL, "critique": CRITIQUE, "request": REQUEST, "instruction": INSTRUCTION, **overrides}
    return gate_reason(revision, **texts)


@pytest.mark.parametrize("revision, expected", [
    (REAL, None),
    ("   \n", "empty"),
    (CRITIQUE, "copies_critique"),
    ("Critique: " + CRITIQUE.lower(), "copies_critique"),  # a prefix and other case: still the critique
    (REQUEST, "copies_request"),
    (INSTRUCTION + " Thank you.", "copies_instruction"),
    (INITIAL, "unchanged"),
    (INITIAL.replace("Sure!", "Sure."), "unchanged"),  # one small edit
    ("I can't help. " * 8, "repetitive"),
    ("I cannot help with that.\nI cannot help with that.\nI cannot help with that.", "repetitive"),
])
def test_gate_names_the_failure(revision, expected):
    assert reason(revision) == expected


def test_similarity_is_word_order_sensitive_and_symmetric():
    assert similarity("a b c d", "a b c d") == 1.0
    assert similarity("", "") == 1.0 and similarity("a", "") == 0.0
    # difflib ratio 2M/T: "a b c d" vs "a b x d" share 3 of 4 words in order
    assert similarity("a b c d", "a b x d") == pytest.approx(2 * 3 / 8)
    assert similarity("a b c d", "d c b a") < 0.5
    assert similarity(REAL, INITIAL) == pytest.approx(similarity(INITIAL, REAL))


def test_repetition_needs_enough_words_and_a_real_loop():
    assert not is_repetitive("no no no")  # too short to judge
    assert not is_repetitive(REAL + " " + REAL.split(".")[0])  # one clause said twice is not a loop
    assert is_repetitive("the the the the the the the the the the the the the")
    settings = GateSettings(min_distinct=0.1)  # 6 distinct of 46 3-grams: passes a bound this lax
    assert not is_repetitive("I can't help. " * 8, settings) and is_repetitive("I can't help. " * 8)


def _chain(index: int, final: str, *, initial: str = INITIAL, critique: str = CRITIQUE) -> dict:
    return {"index": index, "prompt": REQUEST, "initial": initial, "final": final, "error": None,
            "rounds": [{"round": 1, "principle": "harmless", "critique": critique, "revision": final}]}


def test_only_real_revisions_become_data_and_the_rest_is_counted(tmp_path):
    constitution = load_constitution("default")
    principle = constitution.principles[0]
    chains = [_chain(0, REAL), _chain(1, CRITIQUE), _chain(2, INITIAL), _chain(3, principle.revision_request),
              _chain(4, "I can't help. " * 8), _chain(5, REAL, initial=""),
              {"index": 6, "prompt": REQUEST, "initial": None, "final": None, "rounds": [], "error": {"step": "initial"}}]
    for chain in chains:
        for r in chain["rounds"]:
            r["principle"] = principle.name
    sft, prefs, counts = cai_datasets(chains, constitution)
    assert [r["completion"] for r in sft] == [" " + REAL, " " + REAL]  # chains 0 and 5
    assert len(prefs) == 1 and prefs[0]["chosen"] == " " + REAL and prefs[0]["rejected"] == " " + INITIAL
    assert counts["failed"] == 1 and counts["pair_empty_initial"] == 1
    assert counts["rejected"] == {"empty": 0, "copies_critique": 1, "copies_request": 0, "copies_instruction": 1,
                                  "unchanged": 1, "repetitive": 1}
    assert [c.get("gate") for c in chains[:6]] == [None, "copies_critique", "unchanged", "copies_instruction", "repetitive", None]
    metrics = cai_metrics(chains, kept=len(sft))
    assert metrics["kept_revisions"] == 2 and metrics["kept_fraction"] == pytest.approx(2 / 6)
    assert metrics["changed_fraction"] == pytest.approx(5 / 6)  # every final differs from its initial but one

    # with the gate off, the paper's pipeline as it was: every non-empty revision is data
    sft_all, _, counts_all = cai_datasets(chains, constitution, gate=None)
    assert len(sft_all) == 6 and sum(counts_all["rejected"].values()) == 0
