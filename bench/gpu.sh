#!/usr/bin/env bash
# The GPU checks and benchmarks, for a machine with one CUDA GPU and a Python that already holds a
# CUDA build of torch (none is installed here: a CUDA wheel is several GB).
#
#   bash bench/gpu.sh tests      the test suite with the stage tests moved to CUDA (a throwaway copy)
#   bash bench/gpu.sh rl         bench/rl.py on the GPU: an 86M GPT-2, bf16, alignlab against TRL
#   bash bench/gpu.sh pipeline   the quickstart recipe on CUDA, then a tiny recipe with GRPO and PPO
#                                in bf16 under torchrun (NCCL process group, one process)
#   bash bench/gpu.sh vllm       bench/rl.py GRPO with and without a colocated vLLM engine, both tools
#                                (needs vllm importable beside torch; under 8 minutes on one H200 with
#                                RL_STEPS=10 REPEATS=2)
#   bash bench/gpu.sh fsdp       the tiny recipe's SFT, DPO and GRPO with train.parallel fsdp in bf16
#                                under torchrun on every GPU of the machine (NCCL), against ddp
#
# Packages the machine lacks travel as wheels in ./.whl (python 3.12 builds, fetched elsewhere with
# `pip download --no-deps --only-binary=:all: --python-version 3.12 ...`); they are put on
# PYTHONPATH in front of the machine's own. Results go to $OUT (default bench/out/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the console script `alignlab` (the fault tests run it), without touching the machine's packages
"$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e . > /dev/null || echo "warning: no console script" >&2
"$PY" - <<'PY' | tee "$OUT/env.txt"
import torch, transformers
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, {torch.cuda.get_device_name()}, transformers {transformers.__version__}")
PY

case "${1:-}" in
tests)
  # the stage tests pin device "cpu" so that CI is deterministic; on this throwaway copy they go to CUDA
  # (the distributed tests start two processes, which would share the one GPU; the browser test needs chromium)
  # (test_llm_backends compares against a hand-made forward on CPU tensors, test_models checks "auto" itself)
  grep -l -e '"device": "cpu"' -e 'device="cpu"' tests/test_*.py | grep -v -e test_models.py -e test_distributed.py \
    -e test_train_loop.py -e test_llm_backends.py | xargs sed -i -e 's/"device": "cpu"/"device": "cuda"/g' \
    -e 's/device="cpu"/device="cuda"/g' -e 's/torch.device("cpu")/torch.device("cuda")/g'
  timeout "${TEST_TIMEOUT:-420}" "$PY" -m pytest -q -n 8 -p no:cacheprovider -rfE \
    --ignore tests/test_labelling_browser.py --ignore tests/test_distributed.py tests 2>&1 | tee "$OUT/tests.log"
  ;;
rl)
  export BENCH_MODEL=gpt2-small BENCH_DEVICE=cuda BENCH_PRECISION=bf16 BENCH_QUIET_WAIT=5
  "$PY" bench/rl.py --steps "${RL_STEPS:-10}" --prompts 32 --k 8 --repeats "${REPEATS:-2}" --threads 4 --no-trl-gc ${RL_ARGS:-} \
    2>&1 | tee "$OUT/rl.log"
  cp bench/out/rl_*.json "$OUT/"
  ;;
pipeline)
  start=$(date +%s)
  [[ -n "${SKIP_QUICKSTART:-}" ]] || timeout "${QUICKSTART_TIMEOUT:-300}" "$PY" -m alignlab.cli run recipes/quickstart.yaml --out /tmp/quickstart \
    > "$OUT/quickstart.log" 2>&1
  rc=$?
  echo "quickstart on $(cat "$OUT/env.txt"): exit $rc, $(( $(date +%s) - start )) s" | tee -a "$OUT/quickstart.log"
  cp /tmp/quickstart/report/report.md "$OUT/quickstart-report.md" 2>/dev/null || ls /tmp/quickstart/*/ | head -40
  "$PY" - <<'PY'
import sys, yaml
sys.path.insert(0, "tests")
from tiny_recipe import tiny_recipe
recipe = tiny_recipe()
stages = {k: v for k, v in recipe["stages"].items() if k in ("task", "pretrain", "sft")}
online = {"model": "@sft/model", "prompts": "@task/data/prompts_train.jsonl", "reward": {"type": "gold", "task": "sentiment"},
          "sampling": {"max_new_tokens": 16}}
train = {"iterations": 4, "prompts_per_iteration": 8, "lr": 1e-3, "save_every": 2, "device": "cuda", "precision": "bf16"}
stages["grpo"] = {**online, "samples_per_prompt": 4, "train": {**train, "minibatch_size": 16}}
stages["ppo"] = {**online, "kl": {"beta": 0.05, "target": 4.0, "horizon": 100},
                 "train": {**train, "minibatch_size": 4, "update_epochs": 2}}
recipe["stages"] = stages
open("/tmp/tiny-gpu.yaml", "w").write(yaml.safe_dump(recipe, sort_keys=False))
PY
  timeout 240 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m alignlab.cli run /tmp/tiny-gpu.yaml \
    --out /tmp/tiny-gpu > "$OUT/torchrun.log" 2>&1
  rc=$?
  echo "tiny recipe + GRPO + PPO (bf16, cuda, torchrun/NCCL): exit $rc" | tee -a "$OUT/torchrun.log"
  tail -n 3 /tmp/tiny-gpu/grpo/log.jsonl /tmp/tiny-gpu/ppo/log.jsonl 2>&1 | tee -a "$OUT/torchrun.log"
  ;;
vllm)
  "$PY" -c "import vllm" 2>/dev/null || { echo "no vllm here: install it beside this torch (pip install vllm), then rerun" >&2; exit 3; }
  export BENCH_MODEL=gpt2-small BENCH_DEVICE=cuda BENCH_PRECISION=bf16 BENCH_QUIET_WAIT=5
  "$PY" bench/rl.py --algos grpo --steps "${RL_STEPS:-10}" --prompts 32 --k 8 --repeats "${REPEATS:-2}" --threads 4 \
    --no-trl-gc --vllm 2>&1 | tee "$OUT/vllm.log"
  cp bench/out/rl_*.json "$OUT/"
  ;;
fsdp)
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  "$PY" - <<'PY'
import sys, yaml
sys.path.insert(0, "tests")
from tiny_recipe import tiny_recipe
recipe = tiny_recipe()
stages = {k: v for k, v in recipe["stages"].items() if k in ("task", "pretrain", "sft", "pairs", "dpo")}
for stage in ("sft", "dpo"):
    stages[stage].setdefault("train", {}).update(device="cuda", precision="bf16", parallel="fsdp")
stages["grpo"] = {"model": "@sft/model", "prompts": "@task/data/prompts_train.jsonl", "samples_per_prompt": 4,
                  "reward": {"type": "gold", "task": "sentiment"}, "sampling": {"max_new_tokens": 16},
                  "train": {"iterations": 4, "prompts_per_iteration": 8, "minibatch_size": 16, "lr": 1e-3,
                            "device": "cuda", "precision": "bf16", "parallel": "fsdp"}}
recipe["stages"] = stages
open("/tmp/tiny-fsdp.yaml", "w").write(yaml.safe_dump(recipe, sort_keys=False))
PY
  for parallel in fsdp ddp; do
    sed "s/parallel: fsdp/parallel: $parallel/" /tmp/tiny-fsdp.yaml > "/tmp/tiny-$parallel.yaml"
    start=$(date +%s)
    timeout 300 "$PY" -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m alignlab.cli run \
      "/tmp/tiny-$parallel.yaml" --out "/tmp/tiny-$parallel" > "$OUT/$parallel.log" 2>&1
    echo "$parallel on $gpus GPU(s), bf16: exit $?, $(( $(date +%s) - start )) s" | tee -a "$OUT/fsdp.log"
    tail -n 2 "/tmp/tiny-$parallel/grpo/log.jsonl" 2>&1 | tee -a "$OUT/fsdp.log"
  done
  ;;
*)
  echo "usage: bash bench/gpu.sh tests|rl|pipeline|vllm|fsdp" >&2
  exit 2
  ;;
esac
