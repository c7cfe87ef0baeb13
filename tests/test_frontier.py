"""The frontier stage: points grouped by method, best-of-N from its stage, the overoptimisation
view from evaluated snapshots, and clear errors for names that match nothing."""

from __future__ import annotations

import json

import pytest

from alignlab.stages.evaluation.frontier import FrontierConfig, run


def _stage(path, metrics):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    return str(path)


def _model(gold, kl, proxy=0.0):
    return {"gold_mean": gold, "gold_se": 0.01, "kl_mean": kl, "proxy_mean": proxy, "length_mean": 20.0}


@pytest.fixture()
def stages(tmp_path):
    models = {"sft": _model(0.0, 0.0), "dpo_b0.1": _model(0.5, 6.0), "dpo_b1.0": _model(0.2, 1.0),
              "ppo": _model(0.6, 9.0, 3.0), "ppo@iter-00008": _model(0.3, 2.0, 1.0), "ppo@iter-00016": _model(0.2, 8.0, 5.0)}
    evaluate = _stage(tmp_path / "evaluate", {"models": models})
    bon = _stage(tmp_path / "bon", {"points": [
        {"n": 1, "gold_mean": 0.0, "gold_se": 0.02, "proxy_mean": 0.1, "length_mean": 20, "kl_bound": 0.0},
        {"n": 4, "gold_mean": 0.3, "gold_se": 0.02, "proxy_mean": 1.0, "length_mean": 21, "kl_bound": 0.636}]})
    return tmp_path, evaluate, bon


def test_frontier_groups_points_and_writes_plots(stages):
    tmp, evaluate, bon = stages
    cfg = FrontierConfig(evaluate=evaluate, best_of_n=bon, methods={"DPO": ["dpo_*"], "PPO": ["ppo"]},
                         overoptimisation=["ppo"])
    m = run(cfg, tmp / "frontier")
    assert sorted(p["model"] for p in m["methods"]["DPO"]) == ["dpo_b0.1", "dpo_b1.0"]  # snapshots never match
    assert m["best"]["DPO"]["model"] == "dpo_b0.1" and m["best"]["DPO"]["gain"] == pytest.approx(0.5)
    assert m["best"]["best-of-N"]["kl"] == pytest.approx(0.636)
    assert [p["model"] for p in m["overoptimisation"]["ppo"]] == ["ppo@iter-00008", "ppo@iter-00016"]
    assert m["every_method_best_above_start"] is True
    for name in ("frontier.png", "overoptimisation.png", "frontier.md"):
        assert (tmp / "frontier" / name).stat().st_size > 0
    table = (tmp / "frontier" / "frontier.md").read_text()
    assert "| DPO | dpo_b0.1 **(best)** | 0.500 |" in table and "+0.500" in table


def test_a_pattern_that_matches_nothing_is_an_error(stages):
    tmp, evaluate, _ = stages
    with pytest.raises(ValueError, match="no evaluated model matches"):
        run(FrontierConfig(evaluate=evaluate, methods={"KTO": ["kto*"]}), tmp / "f1")
    with pytest.raises(ValueError, match="no evaluated snapshots"):
        run(FrontierConfig(evaluate=evaluate, methods={"DPO": ["dpo_*"]}, overoptimisation=["dpo_b0.1"]), tmp / "f2")
    with pytest.raises(ValueError, match="baseline"):
        run(FrontierConfig(evaluate=evaluate, methods={"DPO": ["dpo_*"]}, baseline="base"), tmp / "f3")


def test_evaluate_expands_snapshot_directories(tmp_path):
    from alignlab.stages.evaluation.evaluate import EvaluateConfig, all_models

    for name in ("iter-00002", "iter-00004"):
        (tmp_path / "snaps" / name).mkdir(parents=True)
        (tmp_path / "snaps" / name / "config.json").write_text("{}")
    (tmp_path / "snaps" / "not-a-model").mkdir()
    cfg = EvaluateConfig(models={"sft": "s"}, snapshots={"ppo": str(tmp_path / "snaps")}, prompts="p")
    assert list(all_models(cfg)) == ["sft", "ppo@iter-00002", "ppo@iter-00004"]
    with pytest.raises(ValueError, match="no saved models"):
        all_models(EvaluateConfig(models={}, snapshots={"x": str(tmp_path / "nothing")}, prompts="p"))
