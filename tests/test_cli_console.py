"""The installed `alignlab` console script as a user runs it from their own directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ALIGNLAB = Path(sys.executable).with_name("alignlab")

REWARDS = '''
from pathlib import Path


def count_e(prompts, completions):
    Path("called").write_text(str(len(completions)))
    return [c.count("e") / max(len(c), 1) for c in completions]
'''


def test_a_callable_reward_is_imported_from_the_working_directory(tiny_model_dir, tmp_path):
    # `function: "my_rewards:count_e"` with my_rewards.py beside the user, as `python -m` would find it
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("the film", "a dull")))
    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [str(ALIGNLAB), "grpo", "--model", str(tiny_model_dir), "--prompts", "prompts.jsonl", "--out", "grpo",
         "--reward", '{type: callable, function: "my_rewards:count_e"}', "--samples_per_prompt", "2",
         "--train.iterations", "1", "--train.prompts_per_iteration", "2", "--train.minibatch_size", "4",
         "--sampling.max_new_tokens", "4", "--train.device", "cpu", "--train.log_samples", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "called").read_text() == "4"
    assert (tmp_path / "grpo" / "done.json").exists()
