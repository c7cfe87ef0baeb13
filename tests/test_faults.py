"""What users see when things go wrong: bad data, bad recipes, a killed run, a diverging loss.

- Bad data given to `alignlab sft | dpo | reward-model`: exit code 1, one line on stderr naming
  the file, the line and the field (no traceback), and no --out directory left behind. Every
  (command, fault) pair is checked in this process through the CLI app; one case per command, and
  the recipe errors, also through the real console script in a subprocess.
- Bad recipes: an unknown key or a reference to a missing or later stage is reported with file,
  line and key before any stage directory is created.
- `alignlab run` SIGKILLed at several moments and rerun ends with the same DPO weights as a run
  that was never interrupted.
- A loss that stops being finite stops the stage with a message naming the step, and no model.

The console script costs ~5 s of imports per subprocess here, so subprocesses are kept to the
cases that need a real process (exit codes, kills); everything else runs in this process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from alignlab.cli import app
from alignlab.pipeline.runner import run_recipe
from tiny_recipe import tiny_recipe, write_tiny_recipe

ALIGNLAB = Path(sys.executable).with_name("alignlab")  # the console script installed next to python
BAD_LINE = 4  # every faulty file has its one bad record on this line, between good ones
MAX_LENGTH, MAX_PROMPT_LENGTH = 96, 48


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread here, as in the subprocesses: the tiny models gain nothing from threads,
    two spinning threads per process are many times slower on a busy machine, and the same
    thread count on both sides keeps the in-process reference run bitwise comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env() -> dict[str, str]:
    """Environment of a CLI subprocess: quiet (CI), offline, single-process, one thread."""
    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name in ("ALIGNLAB_DEBUG", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _alignlab(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    assert ALIGNLAB.exists(), f"console script not found at {ALIGNLAB}; install the package (pip install -e .)"
    return subprocess.run([str(ALIGNLAB), *map(str, args)], env=_env(), capture_output=True, text=True, timeout=timeout)


def _assert_one_clear_error(stderr: str, *fragments: str, line: int | None = None) -> str:
    """stderr is exactly one `error: ...` line (no traceback) holding every fragment (and `line N`)."""
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    message = lines[0]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"
    if line is not None:
        assert re.search(rf"\bline {line}\b", message), f"line {line} missing from: {message}"
    return message


# --- bad data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One bad record: its raw bytes, and what the error must say about it."""

    name: str
    sft: bytes | None  # the record in an SFT file (None: the fault does not apply to SFT data)
    pairs: bytes  # the record in a preference-pair file
    sft_field: str | None  # field the message must name (None: the line is not a record at all)
    pairs_field: str | None
    says: str  # words the message must contain


def _record(**fields) -> bytes:
    return json.dumps(fields).encode()


LONG_PROMPT = " ".join(["the film"] * 40)  # ~160 tokens of the tiny tokenizer, over MAX_PROMPT_LENGTH
FAULTS = [
    Fault("bad_json", b'{"prompt": "the film was", "completion": "fine"', b'{"prompt": "the film", "chosen": "a"',
          None, None, "invalid JSON"),
    Fault("missing_field", _record(prompt="the film was"), _record(prompt="the film was", chosen="a delight"),
          "completion", "rejected", "missing field"),
    Fault("wrong_type", _record(prompt="the film was", completion=42),
          _record(prompt="the film was", chosen=42, rejected="dull"), "completion", "chosen", "got int"),
    Fault("empty_response", _record(prompt="the film was", completion="   "),
          _record(prompt="the film was", chosen="a delight", rejected=""), "completion", "rejected", "empty response"),
    Fault("non_utf8", b'{"prompt": "caf\xe9 review", "completion": "fine"}',
          b'{"prompt": "caf\xe9 review", "chosen": "fine", "rejected": "dull"}', None, None, "not valid UTF-8"),
    Fault("long_prompt", _record(prompt=LONG_PROMPT, completion="fine"),
          _record(prompt=LONG_PROMPT, chosen="a delight", rejected="dull"), "prompt", "prompt",
          f"longer than max_prompt_length={MAX_PROMPT_LENGTH}"),
    Fault("chosen_equals_rejected", None, _record(prompt="the film was", chosen="a delight", rejected="a delight"),
          None, "rejected", "identical"),
]
COMMANDS = ["sft", "dpo", "reward-model"]
CASES = [
    pytest.param(command, fault, id=f"{command}-{fault.name}")
    for command in COMMANDS for fault in FAULTS if command != "sft" or fault.sft is not None
]


def _good_records(command: str, n: int) -> list[bytes]:
    """Valid records with distinct prompts (the pair stages hold some prompts out for eval)."""
    prompts = [f"the film number {i} was" for i in range(n)]
    if command == "sft":
        return [_record(prompt=p, completion="a delight from start to finish") for p in prompts]
    return [_record(prompt=p, chosen="a delight", rejected="dull and tedious") for p in prompts]


def _write_faulty(path: Path, command: str, fault: Fault) -> Path:
    """Seven good records with the bad one at line BAD_LINE."""
    records = _good_records(command, 7)
    records.insert(BAD_LINE - 1, fault.sft if command == "sft" else fault.pairs)
    path.write_bytes(b"\n".join(records) + b"\n")
    return path


def _stage_args(command: str, model_dir: Path, data: Path, out: Path) -> list[str]:
    return [command, "--out", str(out), "--model", str(model_dir), "--data", str(data),
            "--max_length", str(MAX_LENGTH), "--max_prompt_length", str(MAX_PROMPT_LENGTH),
            "--train.max_steps", "2", "--train.device", "cpu"]


def _expected(command: str, fault: Fault, data: Path) -> list[str]:
    field = fault.sft_field if command == "sft" else fault.pairs_field
    return [str(data), fault.says, *([f"field {field!r}"] if field else [])]


@pytest.mark.parametrize("command", COMMANDS)
def test_good_data_passes_the_checks_the_bad_data_fails(command, tiny_model_dir, tmp_path):
    """Control for the cases below: the same files without the bad record train fine."""
    data = tmp_path / "good.jsonl"
    data.write_bytes(b"\n".join(_good_records(command, 8)) + b"\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, _stage_args(command, tiny_model_dir, data, out), env={"CI": "true"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert (out / "model" / "model.safetensors").exists() and (out / "done.json").exists()


@pytest.mark.parametrize("command, fault", CASES)
def test_bad_record_is_one_clear_error_and_writes_nothing(command, fault, tiny_model_dir, tmp_path):
    data = _write_faulty(tmp_path / "data.jsonl", command, fault)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, _stage_args(command, tiny_model_dir, data, out), env={"CI": "true"})
    # a SystemExit(1) from the CLI's error path, not some other exception escaping
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.output, result.exception)
    _assert_one_clear_error(result.stderr, *_expected(command, fault, data), line=BAD_LINE)
    assert not out.exists(), "a partial --out directory was left behind"


@pytest.mark.parametrize("command, fault_name", [("sft", "wrong_type"), ("dpo", "chosen_equals_rejected"),
                                                 ("reward-model", "non_utf8")])
def test_bad_record_via_console_script(command, fault_name, tiny_model_dir, tmp_path):
    fault = next(f for f in FAULTS if f.name == fault_name)
    data = _write_faulty(tmp_path / "data.jsonl", command, fault)
    out = tmp_path / "out"
    proc = _alignlab(*_stage_args(command, tiny_model_dir, data, out))
    assert proc.returncode == 1, proc.stderr
    _assert_one_clear_error(proc.stderr, *_expected(command, fault, data), line=BAD_LINE)
    assert not out.exists()


# --- bad recipes ----------------------------------------------------------------------------------


def _key_line(text: str, *keys: str) -> int:
    """1-based line of the nested YAML key `keys` in block-style `text` (found by indentation)."""
    lines = text.splitlines()
    start, indent = 0, -1
    for key in keys:
        for number in range(start, len(lines)):
            stripped = lines[number].lstrip()
            depth = len(lines[number]) - len(stripped)
            if depth > indent and stripped.startswith(f"{key}:"):
                start, indent = number + 1, depth
                break
        else:
            raise AssertionError(f"key {keys} not in the recipe text")
    return start


RECIPE_FAULTS = {
    # name: (overrides, key path of the bad key, words the message must contain)
    "unknown_stage_key": ({"dpo": {"train": {"lr_warmup": 5}}}, ("stages", "dpo", "train", "lr_warmup"),
                          ["unknown key 'train.lr_warmup'", "stage 'dpo'"]),
    "unknown_top_key": ({"owner": "me"}, ("owner",), ["unknown key 'owner'"]),
    "ref_to_later_stage": ({"sft": {"model": "@dpo/model"}}, ("stages", "sft", "model"),
                           ["stage 'sft'", "key 'model'", "'@dpo/model'", "does not come earlier"]),
    "ref_to_missing_stage": ({"dpo": {"ref_model": "@base/model"}}, ("stages", "dpo", "ref_model"),
                             ["stage 'dpo'", "key 'ref_model'", "'@base/model'", "does not come earlier"]),
}


@pytest.mark.parametrize("name", RECIPE_FAULTS)
def test_recipe_error_names_file_line_and_key_before_any_stage_runs(name, tmp_path):
    overrides, key, words = RECIPE_FAULTS[name]
    recipe = write_tiny_recipe(tmp_path, **overrides)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run_dir)], env={"CI": "true"})
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.output, result.exception)
    _assert_one_clear_error(result.stderr, str(recipe), *words, line=_key_line(recipe.read_text(), *key))
    assert not run_dir.exists(), "a stage ran before the recipe was validated"


@pytest.mark.parametrize("name", ["unknown_stage_key", "ref_to_later_stage"])
def test_recipe_error_via_console_script(name, tmp_path):
    overrides, key, words = RECIPE_FAULTS[name]
    recipe = write_tiny_recipe(tmp_path, **overrides)
    run_dir = tmp_path / "run"
    proc = _alignlab("run", recipe, "--out", run_dir)
    assert proc.returncode == 1, proc.stderr
    _assert_one_clear_error(proc.stderr, str(recipe), *words, line=_key_line(recipe.read_text(), *key))
    assert not run_dir.exists()


# --- kill and resume ------------------------------------------------------------------------------


def _logged_steps(log: Path) -> list[int]:
    """Training steps in a stage's log.jsonl (complete lines only: the file may be mid-write)."""
    if not log.exists():
        return []
    steps = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            steps.append(record["step"])
    return steps


def _written_since(path: Path, since_ns: int) -> bool:
    return path.exists() and path.stat().st_mtime_ns > since_ns


def _run_and_kill(recipe: Path, run_dir: Path, moment: Callable[[int], bool], stderr_path: Path) -> None:
    """Start `alignlab run`, poll until `moment(start time in ns)` holds, then SIGKILL the process."""
    started = time.time_ns()
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([str(ALIGNLAB), "run", str(recipe), "--out", str(run_dir)], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 300
        try:
            while not moment(started):
                if proc.poll() is not None:
                    pytest.fail(f"the run ended (rc {proc.returncode}) before the moment to kill it:\n"
                                f"{stderr_path.read_text()}")
                assert time.monotonic() < deadline, "the moment to kill never came"
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run died of something else:\n{stderr_path.read_text()}"


def test_run_killed_at_several_moments_resumes_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    recipe = write_tiny_recipe(tmp_path, evaluate=None, report=None)  # stages after dpo do not affect it
    dpo_steps = tiny_recipe()["stages"]["dpo"]["train"]["max_steps"]
    assert dpo_steps >= 8 and tiny_recipe()["stages"]["dpo"]["train"]["save_every"] == 2

    # the run that is never interrupted, in this process
    reference = tmp_path / "uninterrupted"
    run_recipe(recipe, reference)
    # the interrupted run reuses the finished data and pretraining stages, to save time; the
    # stages killed below are all computed afresh
    run_dir = tmp_path / "interrupted"
    for stage in ("task", "pretrain"):
        shutil.copytree(reference / stage, run_dir / stage)

    sft, dpo = run_dir / "sft", run_dir / "dpo"
    moments = {
        # the first checkpoint of sft is being written (maybe half-way through)
        "sft_first_checkpoint": (lambda since: (sft / "checkpoints").exists(), sft),
        # dpo has its reference log-probs cached and its first checkpoint under way
        "dpo_first_checkpoint": (lambda since: (dpo / "checkpoints").exists(), dpo),
        # dpo is between checkpoints (saved every 2 steps): step 3 is done but not saved. The log
        # must have been written by this process: the killed one before may have left 3 lines.
        "dpo_between_checkpoints": (lambda since: _written_since(dpo / "log.jsonl", since)
                                    and len(_logged_steps(dpo / "log.jsonl")) >= 3, dpo),
    }
    for name, (moment, stage_dir) in moments.items():
        _run_and_kill(recipe, run_dir, moment, tmp_path / f"{name}.stderr")
        assert not (stage_dir / "done.json").exists(), f"{name}: the kill came after the stage had finished"

    proc = _alignlab("run", recipe, "--out", run_dir)
    assert proc.returncode == 0, proc.stderr
    assert "dpo (dpo): resuming" in proc.stderr

    final = load_file(str(dpo / "model" / "model.safetensors"))
    expected = load_file(str(reference / "dpo" / "model" / "model.safetensors"))
    assert final.keys() == expected.keys()
    worst = max((final[k] - expected[k]).abs().max().item() for k in final)
    assert worst <= 1e-6, f"resumed DPO weights differ from the uninterrupted run's by {worst}"
    assert (dpo / "metrics.json").exists()
    # every step logged exactly once despite the kills (lines past the resumed checkpoint dropped)
    assert _logged_steps(dpo / "log.jsonl") == list(range(1, dpo_steps + 1))
    resumed_loss = json.loads((dpo / "metrics.json").read_text())["train"]["loss"]
    assert resumed_loss == pytest.approx(json.loads((reference / "dpo" / "metrics.json").read_text())["train"]["loss"],
                                         abs=1e-6)


# --- non-finite loss ------------------------------------------------------------------------------


def test_non_finite_loss_stops_the_stage_without_writing_a_model(tiny_model_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_bytes(b"\n".join(_good_records("sft", 8)) + b"\n")
    out = tmp_path / "out"
    # an absurd learning rate: the first Adam step moves weights by ~1e30, the next forward overflows
    proc = _alignlab("sft", "--out", out, "--model", tiny_model_dir, "--data", data, "--max_length", MAX_LENGTH,
                     "--max_prompt_length", MAX_PROMPT_LENGTH, "--train.lr", "1e30", "--train.batch_size", "4",
                     "--train.max_steps", "4", "--train.device", "cpu")
    assert proc.returncode == 1, proc.stderr
    message = _assert_one_clear_error(proc.stderr, "sft")
    assert re.search(r"loss became (nan|inf|-inf)\b", message), message
    assert re.search(r"at step [2-4]\b", message), message
    assert not (out / "model").exists()
