#!/usr/bin/env bash
# Set up ./.venv and run the quickstart recipe: pretrain -> SFT -> pairs -> reward model -> DPO -> evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/alignlab run recipes/quickstart.yaml --out runs/quickstart "$@"
