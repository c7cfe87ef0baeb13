#!/usr/bin/env bash
# Run every benchmark (alignlab against TRL and a plain PyTorch loop) and print the tables
# (DPO, SFT, reward model; then online RL: GRPO and RLOO, also with the model's unfused GELU).
# Usage: bash bench/run.sh [--quick]      (--quick: 1 repeat, fewer steps: a smoke test, not a result)
# Needs bench/.venv-trl (bash bench/setup.sh). Results: bench/out/*.json; the table: bench/out/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=bench/.venv-trl/bin/python
if [[ ! -x "$PY" ]]; then
  echo "bench/.venv-trl is missing: run 'bash bench/setup.sh' first" >&2
  exit 1
fi
REPEATS=3; DPO_STEPS=20; SFT_STEPS=20; RM_STEPS=20; RL_STEPS=15
if [[ "${1:-}" == "--quick" ]]; then
  REPEATS=1; DPO_STEPS=4; SFT_STEPS=4; RM_STEPS=4; RL_STEPS=4; export BENCH_QUIET_WAIT="${BENCH_QUIET_WAIT:-0}"
fi
THREADS="${BENCH_THREADS:-2}"
export PYTHONWARNINGS=ignore
rm -f bench/out/dpo_*.json bench/out/sft*.json bench/out/reward*.json
rm -f bench/out/rl_*.json
"$PY" bench/common.py assets
"$PY" bench/dpo.py --steps "$DPO_STEPS" --batch 8 --repeats "$REPEATS" --threads "$THREADS" > /dev/null
"$PY" bench/sft.py --steps "$SFT_STEPS" --batch 16 --repeats "$REPEATS" --threads "$THREADS" > /dev/null
"$PY" bench/reward.py --steps "$RM_STEPS" --batch 8 --repeats "$REPEATS" --threads "$THREADS" > /dev/null
"$PY" bench/rl.py --steps "$RL_STEPS" --prompts 16 --k 4 --repeats "$REPEATS" --threads "$THREADS" --unfused > /dev/null
"$PY" bench/common.py table | tee bench/out/table.md
