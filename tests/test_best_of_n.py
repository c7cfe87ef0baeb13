"""Best-of-N: the analytic KL, the pick rule (NaN never wins), and the stage on a tiny GPT-2."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from pydantic import ValidationError
from user_modules import importable_module

from alignlab.data.readers import write_jsonl
from alignlab.search.select import pick_best
from alignlab.stages.evaluation.best_of_n import BestOfNConfig, best_of_n_kl, run

NAN = float("nan")

# A user's reward module, imported by "module:function" like a real one.
USER_MODULE = "alignlab_test_best_of_n_rewards"
USER_CODE = '''
import math

def e_count(prompts, completions):
    """Proxy: how many letters "e" the completion has; no score at all for the prompt "hello"."""
    return [math.nan if p == "hello" else float(c.count("e")) for p, c in zip(prompts, completions)]

def length(prompts, completions):
    """A "gold" that disagrees with the proxy: the completion's length in characters."""
    return [float(len(c)) for c in completions]
'''

PROMPTS = ["the film was", "i loved", "hello", "the acting was", "a dull", "not the worst"]


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    with importable_module(tmp_path_factory.mktemp("user_rewards"), USER_MODULE, USER_CODE) as name:
        yield name


# --- pure functions ---------------------------------------------------------------------------


def test_best_of_n_kl_values():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    values = [best_of_n_kl(n) for n in range(1, 65)]
    assert all(b > a for a, b in itertools.pairwise(values))  # grows with N ...
    assert all(v < math.log(n) for n, v in zip(range(2, 65), values[1:]))  # ... but stays below log N
    with pytest.raises(ValueError, match="at least 1"):
        best_of_n_kl(0)


def test_pick_best_takes_the_best_of_the_first_n_only():
    scores = [[0.1, 0.5, 0.3, 0.9], [2.0, 1.0, 3.0, -1.0]]
    assert pick_best(scores, 1) == [0, 0]
    assert pick_best(scores, 2) == [1, 0]
    assert pick_best(scores, 3) == [1, 2]
    assert pick_best(scores, 4) == [3, 2]


def test_pick_best_nan_never_wins_and_all_invalid_gives_none():
    scores = [[NAN, -5.0, NAN], [NAN, NAN, NAN], [float("inf"), 1.0, NAN], [-2.0, -2.0, -1.0]]
    assert pick_best(scores, 1) == [None, None, None, 0]
    assert pick_best(scores, 2) == [1, None, 1, 0]  # equal scores: the earlier sample
    assert pick_best(scores, 3) == [1, None, 1, 2]


def test_pick_best_rejects_bad_n():
    with pytest.raises(ValueError, match="fewer than n=3"):
        pick_best([[1.0, 2.0]], 3)
    with pytest.raises(ValueError, match="at least 1"):
        pick_best([[1.0]], 0)


def test_config_checks_n():
    base = {"model": "m", "prompts": "p.jsonl", "reward": {"type": "callable", "function": "a:b"}}
    assert BestOfNConfig.model_validate(base).n == [1, 2, 4, 8, 16]
    assert BestOfNConfig.model_validate({**base, "n": [8, 1, 2]}).n == [1, 2, 8]
    with pytest.raises(ValidationError, match="at least 1"):
        BestOfNConfig.model_validate({**base, "n": [0, 2]})
    with pytest.raises(ValidationError, match="distinct"):
        BestOfNConfig.model_validate({**base, "n": [2, 2]})
    with pytest.raises(ValidationError, match="extra"):
        BestOfNConfig.model_validate({**base, "task": "sentiment"})


# --- the stage --------------------------------------------------------------------------------


def _run_stage(out, model_dir, prompts_file, user_module, gold):
    cfg = BestOfNConfig.model_validate({
        "model": str(model_dir), "prompts": str(prompts_file), "n": [1, 2, 4, 8],
        "reward": {"type": "callable", "function": f"{user_module}:e_count"},
        "gold": None if gold is None else {"type": "callable", "function": f"{user_module}:{gold}"},
        "sampling": {"max_new_tokens": 12}, "max_prompt_length": 16, "seed": 7,
    })
    return run(cfg, out)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bon_data") / "prompts.jsonl"
    write_jsonl(path, [{"prompt": p} for p in PROMPTS])
    return path


def test_stage_picks_by_proxy_and_reports_every_n(tiny_model_dir, prompts_file, user_module, tmp_path):
    metrics = _run_stage(tmp_path / "bon", tiny_model_dir, prompts_file, user_module, gold="e_count")
    points = metrics["points"]
    assert [p["n"] for p in points] == [1, 2, 4, 8]
    assert [p["kl_bound"] for p in points] == [best_of_n_kl(n) for n in (1, 2, 4, 8)]
    # the prompt "hello" has no valid proxy score: skipped (and counted) for every N
    assert all(p["prompts"] == len(PROMPTS) - 1 and p["skipped_prompts"] == 1 for p in points)
    assert metrics["invalid_proxy_samples"] == 8
    # nested candidate sets on the same prompts: the picked proxy can only grow with N
    proxies = [p["proxy_mean"] for p in points]
    assert all(b >= a for a, b in itertools.pairwise(proxies)), proxies
    assert proxies[-1] > proxies[0]  # and with 8 draws of 12 random tokens it does grow
    for p in points:  # the proxy doubles as gold here, so the two means agree exactly
        assert p["gold_mean"] == pytest.approx(p["proxy_mean"])
        assert p["gold_missing"] == 0

    # samples.jsonl: every prompt with all 8 samples; the recorded picks follow from the recorded scores
    records = [json.loads(x) for x in (tmp_path / "bon" / "data" / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == PROMPTS
    assert all(len(r["samples"]) == 8 for r in records)
    for n, point in zip((1, 2, 4, 8), points):
        best = []
        for r in records:
            scores = [NAN if s["proxy"] is None else s["proxy"] for s in r["samples"]]
            assert r["best"][str(n)] == pick_best([scores], n)[0]
            if r["prompt"] != "hello":
                best.append(max(scores[:n]))
                i = r["best"][str(n)]
                assert r["samples"][i]["proxy"] == r["samples"][i]["completion"].count("e")
        assert point["proxy_mean"] == pytest.approx(sum(best) / len(best))
    hello = records[PROMPTS.index("hello")]
    assert all(s["proxy"] is None for s in hello["samples"]) and set(hello["best"].values()) == {None}
    assert (tmp_path / "bon" / "done.json").exists()


def test_stage_gold_is_scored_on_the_picked_sample(tiny_model_dir, prompts_file, user_module, tmp_path):
    metrics = _run_stage(tmp_path / "bon", tiny_model_dir, prompts_file, user_module, gold="length")
    records = [json.loads(x) for x in (tmp_path / "bon" / "data" / "samples.jsonl").read_text().splitlines()]
    scored = [r for r in records if r["prompt"] != "hello"]
    for point in metrics["points"]:
        picked = [r["samples"][r["best"][str(point["n"])]] for r in scored]
        golds = [s["gold"] for s in picked]
        assert golds == [float(len(s["completion"])) for s in picked]  # the gold of the very sample picked
        assert point["gold_mean"] == pytest.approx(sum(golds) / len(golds))
        sd = math.sqrt(sum((g - point["gold_mean"]) ** 2 for g in golds) / (len(golds) - 1))
        assert point["gold_se"] == pytest.approx(sd / math.sqrt(len(golds)))


def test_stage_without_gold_reports_proxy_only(tiny_model_dir, prompts_file, user_module, tmp_path):
    metrics = _run_stage(tmp_path / "bon", tiny_model_dir, prompts_file, user_module, gold=None)
    assert metrics["gold"] is None
    assert all(math.isnan(p["gold_mean"]) and math.isfinite(p["proxy_mean"]) for p in metrics["points"])
    saved = json.loads((tmp_path / "bon" / "metrics.json").read_text())
    assert [p["proxy_mean"] for p in saved["points"]] == [p["proxy_mean"] for p in metrics["points"]]
