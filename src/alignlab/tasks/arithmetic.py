"""Multi-step arithmetic with worked solutions: a world where each reasoning step can be checked.

A problem is a chain of 2-4 operations (+, -, *) on integers 1-20, written without words:

    Q: 7 + 5 * 3 - 4

The chain is evaluated strictly LEFT TO RIGHT, ignoring the usual precedence of * over + and -:
the problem above means ((7 + 5) * 3) - 4 = 32. That way every step applies exactly one operator
to the running value. A solution writes one step per line, then the answer line:

    7 + 5 = 12
    12 * 3 = 36
    36 - 4 = 32
    A: 32

Prompt/completion convention: the prompt is "Q: <chain>\\n" and its completion is the solution
(steps and answer line, no trailing newline), so prompt + completion is a whole corpus text.

The pretraining corpus deliberately holds flawed solutions: a share `error_rate` of them (default
0.2) carries exactly one wrong step (an arithmetic slip of +-1..3, or the result of the wrong
operator), and every later step computes correctly from that wrong value, so the final answer is
wrong too. A model pretrained on it therefore samples both right and wrong chains, which is what
outcome and process reward models need to learn from. SFT examples are correct by default
(`sft_error_rate=0.0`): supervised data teaches the format and correct reasoning, and the errors
the policy still makes come from pretraining.

Train and test prompts are told apart by a hash of the problem string alone (not of the seed), so
the test problems are the same set for every seed, and corpus and SFT texts never contain one.

Every product draws from its own seed, derived from the caller's seed and a purpose name.
"""

from __future__ import annotations

import hashlib
import random
import re

from alignlab.tasks.base import check_split

MIN_OPERATIONS, MAX_OPERATIONS = 2, 4
MIN_OPERAND, MAX_OPERAND = 1, 20
OPERATORS = ("+", "-", "*")
MAX_SLIP = 3
# Share of distinct problem strings that belong to the test split (see `problem_split`).
TEST_FRACTION = 0.25
PROMPT_PREFIX = "Q: "
ANSWER_PREFIX = "A: "

_STEP_LINE = re.compile(r"^(-?\d+) ([+\-*]) (-?\d+) = (-?\d+)$")
_ANSWER_LINE = re.compile(r"^A: (-?\d+)$")


class ArithmeticTask:
    """Solve left-to-right arithmetic chains step by step; gold reward 1.0 for the right answer."""

    name = "arithmetic"

    def __init__(
        self,
        error_rate: float = 0.2,
        sft_error_rate: float = 0.0,
        max_operand: int = MAX_OPERAND,
        max_operations: int = MAX_OPERATIONS,
    ) -> None:
        for label, rate in (("error_rate", error_rate), ("sft_error_rate", sft_error_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {rate}")
        if max_operand < 2:
            raise ValueError(f"max_operand must be at least 2, got {max_operand}")
        if max_operations < MIN_OPERATIONS:
            raise ValueError(f"max_operations must be at least {MIN_OPERATIONS}, got {max_operations}")
        self.error_rate = error_rate
        self.sft_error_rate = sft_error_rate
        # Smaller worlds (e.g. operands 1-9, at most 3 operations) suit models small enough for a CPU.
        self.limits = (max_operand, max_operations)

    def corpus(self, n: int, seed: int) -> list[str]:
        """`n` whole texts (prompt + solution); a share `error_rate` has one propagated wrong step."""
        records = _worked_problems(n, derive_seed(seed, "corpus"), self.error_rate, self.limits)
        return [prompt + completion for prompt, completion in records]

    def sft_examples(self, n: int, seed: int) -> list[dict]:
        """`n` records {"prompt", "completion"}; a share `sft_error_rate` (default 0) is flawed."""
        records = _worked_problems(n, derive_seed(seed, "sft"), self.sft_error_rate, self.limits)
        return [{"prompt": prompt, "completion": completion} for prompt, completion in records]

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        """`n` problem prompts "Q: <chain>\\n" that `problem_split` assigns to `split`.

        A prompt may repeat within a split; no test prompt is ever a train prompt.
        """
        check_split(split)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return _problems(n, random.Random(derive_seed(seed, f"prompts-{split}")), split, self.limits)

    def gold_reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        """1.0 where `verify_answer` holds for the completion of the matching prompt, else 0.0."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"gold_reward needs one completion per prompt: got {len(prompts)} prompts "
                f"and {len(completions)} completions"
            )
        return [float(verify_answer(p, c)) for p, c in zip(prompts, completions)]


    # The step-checkable part of a task, used by the step_labels and search stages.

    def final_answer(self, completion: str) -> str | None:
        """The answer a completion gives (see `final_answer`)."""
        return final_answer(completion)

    def is_final_step(self, step: str) -> bool:
        """Whether a step line ends the solution: it is the answer line."""
        return step.strip().startswith(ANSWER_PREFIX.strip())

    def label_solution(self, prompt: str, completion: str) -> tuple[list[str], list[bool]]:
        """The completion's steps and their labels, the answer line as the last step (see `label_solution`)."""
        return label_solution(prompt, completion)


# --- reading problems and solutions -----------------------------------------------------------


def parse_problem(prompt: str) -> tuple[list[int], list[str]]:
    """(operands, operators) of a prompt "Q: a op b op c ...\\n"; ValueError when malformed."""
    if not prompt.startswith(PROMPT_PREFIX):
        raise ValueError(f"arithmetic prompt must start with {PROMPT_PREFIX!r}: {prompt!r}")
    tokens = prompt[len(PROMPT_PREFIX):].strip().split(" ")
    operands, operators = tokens[0::2], tokens[1::2]
    if (
        len(tokens) < 3
        or len(tokens) % 2 == 0
        or not all(re.fullmatch(r"\d+", t) for t in operands)
        or not all(t in OPERATORS for t in operators)
    ):
        raise ValueError(f"malformed arithmetic prompt: {prompt!r}")
    return [int(t) for t in operands], operators


def solve(prompt: str) -> tuple[list[str], int]:
    """The correct step lines ("x op y = z", left to right) and final answer of a prompt."""
    operands, operators = parse_problem(prompt)
    return _chain(operands, operators, wrong_step=None, wrong_value=0)


def split_steps(completion: str) -> tuple[list[str], str | None]:
    """(step lines, answer line or None) of a completion.

    Lines are stripped and blank ones dropped. The answer line is the first line starting with
    "A:"; the steps are the lines before it, and anything after it is ignored (a sampled
    completion may run on past its answer). Without an "A:" line every line is a step.
    """
    lines = [line.strip() for line in completion.split("\n")]
    lines = [line for line in lines if line]
    for index, line in enumerate(lines):
        if line.startswith("A:"):
            return lines[:index], line
    return lines, None


def verify_answer(prompt: str, completion: str) -> bool:
    """Whether the completion's answer line is exactly "A: <int>" with the true answer."""
    answer = final_answer(completion)
    return answer is not None and int(answer) == solve(prompt)[1]


def label_steps(prompt: str, completion: str) -> list[bool]:
    """One label per step line of the completion (see `split_steps`): True when the step is right.

    Step i is right exactly when it reads "x op y = z" with x the TRUE running value (the first
    operand for step 0, else the true result of step i-1), op and y the problem's i-th operator
    and next operand, and z = x op y. So a step that continues correctly from an earlier wrong
    value is still wrong: labels say whether each step is correct given the problem, not given
    the text before it. Malformed lines and steps beyond the problem's length are wrong. Missing
    steps and the answer line are not labelled (use `verify_answer` for the answer).
    """
    true_steps, _ = solve(prompt)
    steps, _ = split_steps(completion)
    labels = []
    for index, line in enumerate(steps):
        match = _STEP_LINE.match(line)
        # Comparing parsed integers accepts e.g. "07" for "7"; the layout itself must match.
        labels.append(
            match is not None
            and index < len(true_steps)
            and _parse_step(true_steps[index]) == _step_tuple(match)
        )
    return labels


def final_answer(completion: str) -> str | None:
    """The integer of the answer line "A: <int>" as written (normalised, e.g. "07" -> "7"), or
    None when there is no answer line or it does not hold exactly one integer."""
    _, answer_line = split_steps(completion)
    match = _ANSWER_LINE.match(answer_line) if answer_line is not None else None
    return str(int(match.group(1))) if match else None


def label_solution(prompt: str, completion: str) -> tuple[list[str], list[bool]]:
    """Steps and labels for process supervision: the step lines labelled by `label_steps`, then
    the answer line (when there is one) labelled by `verify_answer`.

    The answer line counts as a step because copying the last result wrongly is an error too;
    a completion cut off before its answer line simply has no such step.
    """
    steps, answer_line = split_steps(completion)
    labels = label_steps(prompt, completion)
    if answer_line is None:
        return steps, labels
    return [*steps, answer_line], [*labels, verify_answer(prompt, completion)]


def first_error(labels: list[bool]) -> int | None:
    """Index of the first False label, or None when every step is right."""
    return next((index for index, right in enumerate(labels) if not right), None)


def apply(left: int, operator: str, right: int) -> int:
    """left operator right, for one of `OPERATORS`."""
    if operator == "+":
        return left + right
    if operator == "-":
        return left - right
    if operator == "*":
        return left * right
    raise ValueError(f"unknown operator {operator!r}")


# --- splits and seeds -------------------------------------------------------------------------


def problem_split(prompt: str) -> str:
    """The split ("train" or "test") that owns this problem, from a stable hash of its text.

    The seed takes no part, so a test problem is held out of every corpus and SFT set,
    whatever seed each was drawn with.
    """
    digest = hashlib.sha256(f"alignlab/arithmetic/{prompt.strip()}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION else "train"


def derive_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose, independent of the others and stable across Python runs."""
    digest = hashlib.sha256(f"alignlab/arithmetic/{purpose}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# --- generation -------------------------------------------------------------------------------


def _problems(n: int, rng: random.Random, split: str, limits: tuple[int, int]) -> list[str]:
    """`n` random prompts owned by `split`, with operands up to limits[0] and up to limits[1] operations."""
    max_operand, max_operations = limits
    chosen: list[str] = []
    while len(chosen) < n:
        count = rng.randint(MIN_OPERATIONS, max_operations)
        operands = [rng.randint(MIN_OPERAND, max_operand) for _ in range(count + 1)]
        operators = [rng.choice(OPERATORS) for _ in range(count)]
        tokens = [str(operands[0])]
        for operator, operand in zip(operators, operands[1:]):
            tokens += [operator, str(operand)]
        prompt = PROMPT_PREFIX + " ".join(tokens) + "\n"
        if problem_split(prompt) == split:
            chosen.append(prompt)
    return chosen


def _worked_problems(n: int, seed: int, error_rate: float, limits: tuple[int, int]) -> list[tuple[str, str]]:
    """`n` (prompt, solution) pairs on train problems; each solution is flawed with `error_rate`."""
    prompts = _problems(n, random.Random(derive_seed(seed, "problems")), "train", limits)
    flaws = random.Random(derive_seed(seed, "flaws"))
    records = []
    for prompt in prompts:
        operands, operators = parse_problem(prompt)
        wrong_step, wrong_value = None, 0
        if flaws.random() < error_rate:
            wrong_step = flaws.randrange(len(operators))
            wrong_value = _wrong_result(operands, operators, wrong_step, flaws)
        steps, answer = _chain(operands, operators, wrong_step, wrong_value)
        records.append((prompt, "\n".join(steps + [f"{ANSWER_PREFIX}{answer}"])))
    return records


def _chain(
    operands: list[int], operators: list[str], wrong_step: int | None, wrong_value: int
) -> tuple[list[str], int]:
    """Step lines and answer, with step `wrong_step` (if any) giving `wrong_value` instead.

    Later steps compute correctly from whatever the previous line said, which is how a slip
    propagates consistently to the answer.
    """
    value, steps = operands[0], []
    for index, (operator, operand) in enumerate(zip(operators, operands[1:])):
        result = wrong_value if index == wrong_step else apply(value, operator, operand)
        steps.append(f"{value} {operator} {operand} = {result}")
        value = result
    return steps, value


def _wrong_result(
    operands: list[int], operators: list[str], step: int, rng: random.Random
) -> int:
    """A result for step `step` that differs from the true one: a slip or another operator's.

    Any nonzero difference survives the later steps (+ and - keep it, * by an operand >= 1
    scales it), so the final answer is wrong as well.
    """
    value = operands[0]
    for operator, operand in zip(operators[:step], operands[1:step + 1]):
        value = apply(value, operator, operand)
    operator, operand = operators[step], operands[step + 1]
    true = apply(value, operator, operand)
    if rng.random() < 0.5:
        # With an operand >= 1, x + y != x - y, so at least one other operator gives another value.
        others = [apply(value, o, operand) for o in OPERATORS if o != operator]
        others = [result for result in others if result != true]
        return rng.choice(others)
    return true + rng.choice([-1, 1]) * rng.randint(1, MAX_SLIP)


def _parse_step(line: str) -> tuple[int, str, int, int]:
    match = _STEP_LINE.match(line)
    assert match is not None, line
    return _step_tuple(match)


def _step_tuple(match: re.Match) -> tuple[int, str, int, int]:
    return int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
