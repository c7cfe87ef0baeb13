"""The step_labels and search stages end to end on a tiny LM pretrained on a small arithmetic world."""

from __future__ import annotations

import json
import math

import pytest

from alignlab.data.stepwise import load_stepwise
from alignlab.models import load_tokenizer
from alignlab.models.value import load_critic
from alignlab.rollout import SamplingSettings
from alignlab.stages.evaluation import search as search_stage
from alignlab.stages.offline.pretrain import PretrainConfig
from alignlab.stages.offline.pretrain import run as pretrain
from alignlab.stages.evaluation.search import BeamSettings, SearchConfig
from alignlab.stages.data.step_labels import StepLabelsConfig
from alignlab.stages.data.step_labels import run as step_labels
from alignlab.stages.data.task_data import TaskDataConfig
from alignlab.stages.data.task_data import run as task_data
from alignlab.tasks import get_task
from alignlab.train import TrainSettings

# Operands 1-3 and two operations: small enough for a 2-layer model to get some answers right
# after ~15 s of pretraining, which the checks below need.
TASK = {"name": "arithmetic", "max_operand": 3, "max_operations": 2, "error_rate": 0.3}
SAMPLING = SamplingSettings(max_new_tokens=28, batch_size=128)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    root = tmp_path_factory.mktemp("reasoning")
    task_data(TaskDataConfig(task=TASK, sft_size=50, train_prompts=60, test_prompts=40), root / "task")
    pretrain(PretrainConfig(
        task=TASK, corpus_size=12000, vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, max_length=32,
        train=TrainSettings(lr=3e-3, batch_size=32, epochs=1, warmup_ratio=0.05, schedule="cosine", device="cpu",
                            save_every=None, log_every=50),
    ), root / "lm")
    return root


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def labelled(policy):
    """step_labels run once on the training problems: (its metrics, its data directory)."""
    metrics = step_labels(StepLabelsConfig(
        model=str(policy / "lm/model"), prompts=str(policy / "task/data/prompts_train.jsonl"), task=TASK,
        samples_per_prompt=6, eval_fraction=0.2, sampling=SAMPLING, seed=3,
    ), policy / "labels")
    return metrics, policy / "labels/data"


def test_step_labels_writes_checker_labelled_step_outcome_and_pair_data(labelled):
    metrics, data = labelled
    task = get_task(TASK)
    steps = {s: _records(data / f"steps_{s}.jsonl") for s in ("train", "test")}
    outcomes = {s: _records(data / f"outcomes_{s}.jsonl") for s in ("train", "test")}
    # split by problem: a fifth of the distinct problems held out, none on both sides
    assert metrics["held_out_problems"] == round(0.2 * metrics["problems"]) > 0
    assert not {r["prompt"] for r in steps["train"]} & {r["prompt"] for r in steps["test"]}
    every = steps["train"] + steps["test"]
    assert len(every) == metrics["samples"] == 360 - metrics["dropped_empty"]
    # the labels are the checker's, the answer line last; outcomes label the same solutions
    for record, outcome in zip(every, outcomes["train"] + outcomes["test"]):
        joined = "\n".join(record["completions"])
        assert task.label_solution(record["prompt"], joined) == (record["completions"], record["labels"])
        assert outcome["completions"] == [joined]
        assert outcome["labels"] == [task.gold_reward([record["prompt"]], [joined])[0] == 1.0]
    right = sum(o["labels"][0] for o in outcomes["train"] + outcomes["test"])
    assert metrics["accuracy"] == pytest.approx(right / len(every))
    assert 0.05 < metrics["accuracy"] < 0.9  # both right and wrong solutions to learn from
    for pair in _records(data / "pairs_train.jsonl") + _records(data / "pairs_test.jsonl"):
        assert task.gold_reward([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]]) == [1.0, 0.0]
    # the files read back as step-labelled data
    assert len(load_stepwise(data / "steps_train.jsonl")) == len(steps["train"])
    assert len(load_stepwise(data / "outcomes_test.jsonl")) == len(outcomes["test"])


def test_a_bradley_terry_orm_from_the_pairs_ranks_best_of_n_by_final_answer(policy, labelled):
    # The pairs step_labels writes train an ORM with the reward_model stage; best_of_n then picks
    # by it and reports the verifier's exact match as the gold score.
    from alignlab.stages.evaluation.best_of_n import BestOfNConfig
    from alignlab.stages.evaluation.best_of_n import run as best_of_n
    from alignlab.stages.offline.reward_model import RewardModelConfig
    from alignlab.stages.offline.reward_model import run as reward_model

    _, data = labelled
    rm = reward_model(RewardModelConfig(
        model=str(policy / "lm/model"), data=str(data / "pairs_train.jsonl"), max_length=64, max_prompt_length=16,
        train=TrainSettings(lr=1e-3, batch_size=16, epochs=3, device="cpu", save_every=None, seed=0),
    ), policy / "orm-bt")
    assert rm["train_pairs"] > 20
    metrics = best_of_n(BestOfNConfig(
        model=str(policy / "lm/model"), prompts=str(policy / "task/data/prompts_test.jsonl"),
        reward={"type": "reward_model", "path": str(policy / "orm-bt/model")}, gold={"type": "gold", "task": TASK},
        n=[1, 8], sampling=SAMPLING,
    ), policy / "bon-orm")
    # the ORM fits its right-over-wrong pairs (at this size it does not rank held-out answers
    # better than chance: the reasoning recipe measures that at a usable size)
    losses = [x["loss"] for x in _records(policy / "orm-bt/log.jsonl") if "loss" in x]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    first, eight = metrics["points"]
    assert first["proxy_mean"] < eight["proxy_mean"]
    assert 0.0 <= first["gold_mean"] <= 1.0 and 0.0 <= eight["gold_mean"] <= 1.0


class OracleScorer:
    """A scorer that knows the truth: P(step right) is the checker's label (0 or 1)."""

    def __init__(self, task):
        self.task = task

    def step_probs(self, prompts, solutions):
        return [[float(x) for x in self.task.label_solution(p, "\n".join(s))[1]] if s else []
                for p, s in zip(prompts, solutions)]

    def outcome_scores(self, prompts, solutions):
        return [float(self.task.gold_reward([p], ["\n".join(s)])[0]) for p, s in zip(prompts, solutions)]


def _search_config(policy, **kwargs) -> SearchConfig:
    return SearchConfig(model=str(policy / "lm/model"), prompts=str(policy / "task/data/prompts_test.jsonl"),
                        task=TASK, n=[1, 2, 4, 8], sampling=SAMPLING, **kwargs)


def test_search_with_oracle_scorers_reaches_pass_at_n_and_beam_search_beats_one_sample(policy, monkeypatch):
    task = get_task(TASK)
    monkeypatch.setattr(search_stage, "_scorer", lambda path, device, max_length: OracleScorer(task))
    cfg = _search_config(policy, orm="oracle", prm="oracle", prm_aggregate="last",
                         beam=BeamSettings(expansions=2, max_steps=5, aggregate="last", max_new_tokens=12))
    metrics = search_stage.run(cfg, policy / "search-oracle")
    methods = {name: [p["accuracy"] for p in points] for name, points in metrics["methods"].items()}
    oracle = methods["oracle (pass@N)"]
    assert oracle == sorted(oracle) and oracle[-1] > oracle[0]  # pass@N grows with N
    # a perfect outcome or answer-line scorer picks a right answer whenever one was sampled
    assert methods["ORM best-of-N"] == pytest.approx(oracle)
    assert methods["PRM best-of-N (last)"] == pytest.approx(oracle)
    # and so does a vote weighted by it: only right answers carry weight
    assert methods["ORM-weighted vote"] == pytest.approx(oracle)
    assert methods["PRM-weighted vote"] == pytest.approx(oracle)
    assert metrics["within_problem_auc"] == {"orm": 1.0, "prm": 1.0}
    vote = methods["majority vote"]
    assert all(v <= o + 1e-9 for v, o in zip(vote, oracle))
    # at N = 1 every selector takes the one sample there is
    samples = _records(policy / "search-oracle/data/samples.jsonl")
    first = sum(r["samples"][0]["correct"] for r in samples) / len(samples)
    assert vote[0] == pytest.approx(first) and oracle[0] == pytest.approx(first)
    # beam search guided by the true step labels keeps right steps when it samples any
    beam = metrics["methods"]["PRM beam search (last, K=2)"]
    assert [p["n"] for p in beam] == [2, 4, 8] and [p["width"] for p in beam] == [1, 2, 4]
    assert beam[-1]["accuracy"] > first + 0.1
    assert all(set(r["beam"]) == {"2", "4", "8"} for r in samples)
    assert (policy / "search-oracle/accuracy_vs_n.png").stat().st_size > 0
    assert "| majority vote |" in (policy / "search-oracle/table.md").read_text()


def test_search_loads_saved_scorers_and_uninformative_ones_pick_the_first_answered_sample(policy):
    # A token classifier with a fresh (zero) head scores every step 0.5: every sample ties, so
    # best-of-N keeps the earliest answered sample and its accuracy is the same at every N.
    scorer_dir = policy / "zero-head"
    tokenizer = load_tokenizer(str(policy / "lm/model"))
    load_critic(policy / "lm/model", pad_token_id=tokenizer.pad_token_id).save_pretrained(scorer_dir)
    tokenizer.save_pretrained(scorer_dir)
    cfg = _search_config(policy, orm=str(scorer_dir), prm=str(scorer_dir), prm_aggregate="prod")
    metrics = search_stage.run(cfg, policy / "search-zero")
    samples = _records(policy / "search-zero/data/samples.jsonl")
    assert all(s["prm"] == pytest.approx(0.5 ** len(s["steps"])) for r in samples for s in r["samples"] if s["answer"])
    assert all(s["orm"] == pytest.approx(0.5) for r in samples for s in r["samples"] if s["answer"])
    assert metrics["within_problem_auc"]["orm"] == pytest.approx(0.5)  # every pair tied
    # ORM ties go to the earliest answered sample, so N only matters through unanswered ones
    expected = []
    for n in cfg.n:
        picks = [next((s for s in r["samples"][:n] if s["answer"] is not None), None) for r in samples]
        expected.append(sum(bool(p and p["correct"]) for p in picks) / len(samples))
    assert [p["accuracy"] for p in metrics["methods"]["ORM best-of-N"]] == pytest.approx(expected)


def test_within_problem_auc_counts_pairs_inside_each_problem_only():
    from alignlab.stages.evaluation.search import within_problem_auc

    # problem 0: right 0.9 beats wrong 0.1 and ties 0.9; problem 1: right 0.2 loses to wrong 0.3;
    # the NaN sample and problem 2 (no wrong answer) make no pairs; 0.9 vs 0.2 across problems
    # would be a win but is never compared
    scores = [[0.9, 0.1, 0.9], [0.2, 0.3, float("nan")], [0.5]]
    correct = [[True, False, False], [True, False, False], [True]]
    assert within_problem_auc(scores, correct) == pytest.approx((1 + 0.5 + 0) / 3)
    assert math.isnan(within_problem_auc([[0.5]], [[True]]))


def test_search_needs_a_prm_for_beam_search_and_a_step_checkable_task(policy):
    with pytest.raises(ValueError, match="beam search is guided by the PRM"):
        search_stage.run(_search_config(policy, beam=BeamSettings()), policy / "bad")
    with pytest.raises(ValueError, match="cannot check steps"):
        search_stage.run(SearchConfig(model=str(policy / "lm/model"), prompts=str(policy / "task/data/prompts_test.jsonl"),
                                      task="sentiment"), policy / "bad2")


def test_grpo_with_the_verifier_as_reward_raises_exact_match(policy):
    from alignlab.stages.evaluation.evaluate import EvaluateConfig
    from alignlab.stages.evaluation.evaluate import run as evaluate
    from alignlab.stages.online.grpo import GRPOConfig, run_grpo

    out = policy / "grpo"
    prompts = str(policy / "task/data/prompts_train.jsonl")
    run_grpo(GRPOConfig(
        model=str(policy / "lm/model"), prompts=prompts, reward={"type": "gold", "task": TASK},
        samples_per_prompt=8, beta=0.01, sampling=SAMPLING,
        # a small learning rate: Adam moves every weight by about lr per step, and a noisy
        # binary reward at a larger rate erases the arithmetic the model knows
        train={"iterations": 90, "prompts_per_iteration": 8, "minibatch_size": 64, "lr": 1e-4, "seed": 0,
               "device": "cpu", "save_every": None},
    ), out)
    # Exact match of fresh samples (another seed than training drew), 8 per prompt. At this size
    # the gain stays on the training problems; recipes/reasoning.yaml measures held-out problems.
    metrics = evaluate(EvaluateConfig(
        models={"start": str(policy / "lm/model"), "grpo": str(out / "model")}, task=TASK, samples_per_prompt=8,
        prompts=prompts, sampling=SAMPLING, reference=str(policy / "lm/model"), seed=77,
    ), policy / "grpo-eval")["models"]
    assert metrics["grpo"]["gold_mean"] > metrics["start"]["gold_mean"] + 0.08, metrics
    assert metrics["grpo"]["kl_mean"] < 5.0
