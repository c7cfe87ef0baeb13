"""The built-in `arithmetic` task: left-to-right chains, flawed corpora, step labels, gold reward."""

from __future__ import annotations

import pytest

from alignlab.tasks import get_task
from alignlab.tasks.arithmetic import (
    MAX_OPERAND,
    MAX_OPERATIONS,
    MIN_OPERATIONS,
    ArithmeticTask,
    apply,
    final_answer,
    first_error,
    label_solution,
    label_steps,
    parse_problem,
    problem_split,
    solve,
    split_steps,
    verify_answer,
)
from alignlab.tasks.base import Task

PROMPT = "Q: 7 + 5 * 3 - 4\n"
RIGHT = "7 + 5 = 12\n12 * 3 = 36\n36 - 4 = 32\nA: 32"


@pytest.fixture(scope="module")
def task() -> ArithmeticTask:
    return ArithmeticTask()


@pytest.fixture(scope="module")
def corpus_2000(task) -> list[str]:
    return task.corpus(2000, seed=0)


def split_text(text: str) -> tuple[str, str]:
    """A corpus text back into (prompt, completion): the prompt is the first line."""
    first, rest = text.split("\n", 1)
    return first + "\n", rest


# --- solving ----------------------------------------------------------------------------------


def test_solve_goes_strictly_left_to_right():
    assert solve(PROMPT) == (["7 + 5 = 12", "12 * 3 = 36", "36 - 4 = 32"], 32)
    # Precedence would give 2 + 12 = 14; left to right gives (2 + 3) * 4 = 20.
    assert solve("Q: 2 + 3 * 4\n") == (["2 + 3 = 5", "5 * 4 = 20"], 20)
    assert solve("Q: 3 - 10 * 2 + 20\n") == (
        ["3 - 10 = -7", "-7 * 2 = -14", "-14 + 20 = 6"],
        6,
    )


@pytest.mark.parametrize("bad", ["7 + 5\n", "Q: 7 +\n", "Q: 7 / 5\n", "Q: 7 + x\n", "Q: 7\n"])
def test_malformed_prompts_are_refused(bad):
    with pytest.raises(ValueError):
        parse_problem(bad)


def test_task_is_a_task_and_checks_its_rates(task):
    assert isinstance(task, Task)
    assert task.name == "arithmetic"
    with pytest.raises(ValueError):
        ArithmeticTask(error_rate=1.5)
    with pytest.raises(ValueError):
        ArithmeticTask(sft_error_rate=-0.1)


# --- corpus -----------------------------------------------------------------------------------


def test_corpus_is_deterministic_per_seed(task, corpus_2000):
    assert task.corpus(2000, seed=0) == corpus_2000
    assert task.corpus(50, seed=1) != corpus_2000[:50]


def test_problems_are_chains_of_2_to_4_operations_on_1_to_20(corpus_2000):
    lengths = set()
    for text in corpus_2000:
        operands, operators = parse_problem(split_text(text)[0])
        lengths.add(len(operators))
        assert all(1 <= x <= 20 for x in operands)
    assert lengths == set(range(MIN_OPERATIONS, MAX_OPERATIONS + 1))


def test_corpus_error_rate_matches_the_setting(corpus_2000):
    wrong = sum(not verify_answer(*split_text(text)) for text in corpus_2000)
    assert abs(wrong / len(corpus_2000) - 0.2) <= 0.05
    flawless = ArithmeticTask(error_rate=0.0).corpus(300, seed=0)
    assert all(verify_answer(*split_text(text)) for text in flawless)
    always = ArithmeticTask(error_rate=0.6).corpus(2000, seed=3)
    assert abs(sum(not verify_answer(*split_text(t)) for t in always) / 2000 - 0.6) <= 0.05


def test_every_corpus_error_is_one_wrong_step_then_consistent_propagation(corpus_2000):
    for text in corpus_2000:
        prompt, completion = split_text(text)
        operands, operators = parse_problem(prompt)
        steps, answer_line = split_steps(completion)
        assert len(steps) == len(operators)
        value, slips = operands[0], 0
        for line, operator, operand in zip(steps, operators, operands[1:]):
            x, op, y, z = line.replace(" = ", " ").split(" ")
            # Each step continues from what the previous line said, with the problem's operator.
            assert (int(x), op, int(y)) == (value, operator, operand)
            slips += int(z) != apply(int(x), op, int(y))
            value = int(z)
        assert answer_line == f"A: {value}"
        labels = label_steps(prompt, completion)
        if verify_answer(prompt, completion):
            assert slips == 0 and all(labels)
        else:
            # One slip; from it on every step is wrong given the problem.
            assert slips == 1
            k = first_error(labels)
            assert k is not None and labels == [True] * k + [False] * (len(steps) - k)


def test_both_slips_and_wrong_operators_occur(corpus_2000):
    kinds = set()
    for text in corpus_2000:
        prompt, completion = split_text(text)
        steps, _ = split_steps(completion)
        k = first_error(label_steps(prompt, completion))
        if k is None:
            continue
        x, op, y, z = steps[k].replace(" = ", " ").split(" ")
        others = {apply(int(x), o, int(y)) for o in "+-*" if o != op}
        kinds.add("operator" if int(z) in others else "slip")
    assert kinds == {"operator", "slip"}


# --- SFT and prompts --------------------------------------------------------------------------


def test_sft_examples_are_correct_by_default_and_can_carry_errors(task):
    examples = task.sft_examples(300, seed=0)
    assert examples == task.sft_examples(300, seed=0)
    assert all(set(e) == {"prompt", "completion"} for e in examples)
    assert all(verify_answer(e["prompt"], e["completion"]) for e in examples)
    flawed = ArithmeticTask(sft_error_rate=0.5).sft_examples(400, seed=0)
    share = sum(not verify_answer(e["prompt"], e["completion"]) for e in flawed) / 400
    assert 0.4 <= share <= 0.6


def test_train_and_test_prompts_are_disjoint_and_test_is_held_out_of_training(task):
    train = task.prompts("train", 2000, seed=0)
    test = task.prompts("test", 500, seed=0)
    assert len(train) == 2000 and len(test) == 500
    assert not set(train) & set(test)
    assert all(problem_split(p) == "test" for p in test)
    assert task.prompts("test", 500, seed=0) == test
    # Held out whatever seed the training data was drawn with.
    seen = {split_text(t)[0] for t in task.corpus(2000, seed=5)}
    seen |= {e["prompt"] for e in task.sft_examples(500, seed=9)}
    assert not seen & set(test) and not seen & set(task.prompts("test", 500, seed=1))
    with pytest.raises(ValueError):
        task.prompts("valid", 1, seed=0)


# --- checking completions ---------------------------------------------------------------------


def test_verify_answer_on_right_wrong_and_malformed():
    assert verify_answer(PROMPT, RIGHT)
    assert verify_answer(PROMPT, "A: 32")  # the answer alone counts
    assert verify_answer(PROMPT, RIGHT + "\nQ: 1 + 1\n")  # text after the answer is ignored
    assert not verify_answer(PROMPT, RIGHT.replace("A: 32", "A: 31"))
    for malformed in ["", "7 + 5 = 12", "A: thirty-two", "A:32", "A: 32.0", "answer 32"]:
        assert not verify_answer(PROMPT, malformed)


def test_split_steps():
    assert split_steps(RIGHT) == (["7 + 5 = 12", "12 * 3 = 36", "36 - 4 = 32"], "A: 32")
    assert split_steps("7 + 5 = 12\n\n 12 * 3 = 36 \n") == (["7 + 5 = 12", "12 * 3 = 36"], None)
    assert split_steps("A: 1\n2 + 2 = 4") == ([], "A: 1")


def test_label_steps_all_right():
    labels = label_steps(PROMPT, RIGHT)
    assert labels == [True, True, True] and first_error(labels) is None


def test_label_steps_first_step_wrong_propagated():
    completion = "7 + 5 = 13\n13 * 3 = 39\n39 - 4 = 35\nA: 35"
    labels = label_steps(PROMPT, completion)
    assert labels == [False, False, False] and first_error(labels) == 0


def test_label_steps_middle_step_wrong_propagated():
    completion = "7 + 5 = 12\n12 * 3 = 15\n15 - 4 = 11\nA: 11"
    labels = label_steps(PROMPT, completion)
    assert labels == [True, False, False] and first_error(labels) == 1


def test_label_steps_recovery_and_wrong_operands():
    # A later step that is correct given the problem is right again.
    assert label_steps(PROMPT, "7 + 5 = 12\n12 * 3 = 35\n36 - 4 = 32\nA: 32") == [True, False, True]
    # Right arithmetic with the wrong operator or operand is wrong.
    assert label_steps(PROMPT, "7 * 5 = 35\n12 * 4 = 48") == [False, False]


def test_label_steps_malformed_extra_and_missing_lines():
    labels = label_steps(PROMPT, "7 + 5 = 12\n12 times 3 is 36\n36 - 4 = 32\nA: 32")
    assert labels == [True, False, True] and first_error(labels) == 1
    assert label_steps(PROMPT, RIGHT.replace("\nA: 32", "\n32 + 0 = 32")) == [True, True, True, False]
    # Missing answer line: the steps are still labelled, the answer fails verification.
    no_answer = "7 + 5 = 12\n12 * 3 = 36"
    assert label_steps(PROMPT, no_answer) == [True, True]
    assert not verify_answer(PROMPT, no_answer)
    assert label_steps(PROMPT, "") == [] and first_error([]) is None


def test_gold_reward(task):
    completions = [RIGHT, RIGHT.replace("A: 32", "A: 33"), "garbage"]
    assert task.gold_reward([PROMPT] * 3, completions) == [1.0, 0.0, 0.0]
    assert task.gold_reward([], []) == []
    with pytest.raises(ValueError):
        task.gold_reward([PROMPT], [])


def test_label_solution_adds_the_answer_line_as_the_last_step():
    prompt = "Q: 2 + 3 * 4\n"
    steps, labels = label_solution(prompt, "2 + 3 = 5\n5 * 4 = 20\nA: 20")
    assert steps == ["2 + 3 = 5", "5 * 4 = 20", "A: 20"] and labels == [True, True, True]
    # right steps, answer copied wrongly: only the answer line is wrong
    assert label_solution(prompt, "2 + 3 = 5\n5 * 4 = 20\nA: 21")[1] == [True, True, False]
    # cut off before the answer: steps only
    assert label_solution(prompt, "2 + 3 = 5\n5 * 4 =") == (["2 + 3 = 5", "5 * 4 ="], [True, False])
    assert final_answer("1 + 1 = 2\nA: 07\nA: 9") == "7"
    assert final_answer("1 + 1 = 2\nA: seven") is None and final_answer("1 + 1 = 2") is None
    task = ArithmeticTask()
    assert task.is_final_step("A: 3") and not task.is_final_step("3 + 1 = 4")


def test_smaller_worlds_are_configured_through_the_task_spec():
    task = get_task({"name": "arithmetic", "max_operand": 9, "max_operations": 3})
    for prompt in task.prompts("train", 200, seed=0):
        operands, operators = parse_problem(prompt)
        assert all(1 <= x <= 9 for x in operands) and 2 <= len(operators) <= 3
    assert get_task("arithmetic").limits == (MAX_OPERAND, MAX_OPERATIONS)
    with pytest.raises(ValueError, match="bad options"):
        get_task({"name": "arithmetic", "max_digits": 2})
    with pytest.raises(ValueError, match="unknown task"):
        get_task({"max_operand": 9})
    with pytest.raises(ValueError, match="max_operand"):
        ArithmeticTask(max_operand=1)
