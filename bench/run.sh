#!/usr/bin/env bash
# Run every benchmark (alignlab against TRL and a plain PyTorch loop) and print the tables
# (DPO, SFT, reward model; then online RL: GRPO and RLOO, also with the model's unfused GELU;
# then the scaling rows: DPO with both tools precomputing and GRPO on a 26M-parameter GPT-2).
# Usage: bash bench/run.sh [--quick]      (--quick: 1 repeat, fewer steps: a smoke test, not a result)
# Needs bench/.venv-trl (bash bench/setup.sh). Results: bench/out/*.json; the table: bench/out/table.md.
#
# Environment: BENCH_THREADS (2), SCALE=0 skips the 26M rows, SCALE_DPO_STEPS (10) and
# SCALE_RL_STEPS (8) size them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=bench/.venv-trl/bin/python
if [[ ! -x "$PY" ]]; then
  echo "bench/.venv-trl is missing: run 'bash bench/setup.sh' first" >&2
  exit 1
fi
REPEATS=3; DPO_STEPS=20; SFT_STEPS=20; RM_STEPS=20; RL_STEPS=15
# the 26M rows: fewer steps than the tiny jobs (a step costs 5-8 times as much), still 3 repeats
SCALE="${SCALE:-1}"; SCALE_DPO_STEPS="${SCALE_DPO_STEPS:-10}"; SCALE_RL_STEPS="${SCALE_RL_STEPS:-8}"
ESTIMATE="about 29 min on the project's quiet 2-core machine (tiny jobs ~20, the 26M rows ~9), up to 40 on a slower host"
if [[ "${1:-}" == "--quick" ]]; then
  REPEATS=1; DPO_STEPS=4; SFT_STEPS=4; RM_STEPS=4; RL_STEPS=4; SCALE_DPO_STEPS=2; SCALE_RL_STEPS=2
  export BENCH_QUIET_WAIT="${BENCH_QUIET_WAIT:-0}"
  ESTIMATE="about 7 min (a smoke test: its figures mean nothing)"
fi
[[ "$SCALE" == "0" ]] && ESTIMATE="$ESTIMATE; SCALE=0: without the 26M rows"
THREADS="${BENCH_THREADS:-2}"
export PYTHONWARNINGS=ignore
START=$(date +%s)
elapsed() { echo "$(( ($(date +%s) - START) / 60 )) min $(( ($(date +%s) - START) % 60 )) s"; }
echo "bench/run.sh: estimated time $ESTIMATE" >&2
rm -f bench/out/dpo_*.json bench/out/sft*.json bench/out/reward*.json
rm -f bench/out/rl_*.json
"$PY" bench/common.py assets
"$PY" bench/dpo.py --steps "$DPO_STEPS" --batch 8 --repeats "$REPEATS" --threads "$THREADS" > /dev/null
echo "[$(elapsed)] DPO done" >&2
"$PY" bench/sft.py --steps "$SFT_STEPS" --batch 16 --repeats "$REPEATS" --threads "$THREADS" > /dev/null
echo "[$(elapsed)] SFT done" >&2
"$PY" bench/reward.py --steps "$RM_STEPS" --batch 8 --repeats "$REPEATS" --threads "$THREADS" > /dev/null
echo "[$(elapsed)] reward model done" >&2
"$PY" bench/rl.py --steps "$RL_STEPS" --prompts 16 --k 4 --repeats "$REPEATS" --threads "$THREADS" --unfused > /dev/null
echo "[$(elapsed)] GRPO and RLOO done" >&2
if [[ "$SCALE" != "0" ]]; then
  # the scaling rows: hidden 512, 8 layers, 8 heads (26.29M parameters with the bench's 1,841-token
  # vocabulary; its own assets under bench/out/assets-gpt2-25m, results named *-gpt2-25m)
  BENCH_MODEL=gpt2-25m "$PY" bench/common.py assets
  BENCH_MODEL=gpt2-25m "$PY" bench/dpo.py --steps "$SCALE_DPO_STEPS" --batch 8 --repeats "$REPEATS" \
    --threads "$THREADS" --jobs matched --no-plain > /dev/null
  BENCH_MODEL=gpt2-25m "$PY" bench/rl.py --steps "$SCALE_RL_STEPS" --prompts 16 --k 4 --repeats "$REPEATS" \
    --threads "$THREADS" --algos grpo --no-trl-gc > /dev/null
  echo "[$(elapsed)] 26M rows done" >&2
fi
"$PY" bench/common.py table | tee bench/out/table.md
echo "bench/run.sh: took $(elapsed) (estimated $ESTIMATE)" | tee -a bench/out/table.md
