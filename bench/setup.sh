#!/usr/bin/env bash
# Create bench/.venv-trl: alignlab + TRL in a venv of their own, so the project's .venv never gets
# TRL (or whatever TRL pulls in). torch is installed first and then pinned by a constraints file,
# so no dependency range can replace it with another (e.g. a multi-GB CUDA) build; transformers is
# pinned to the project venv's version so both tools run the very same model code.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv-trl
TORCH="${ALIGNLAB_TORCH:-torch==2.13.0}"
TRANSFORMERS="${BENCH_TRANSFORMERS:-transformers==5.23.0}"
TRL="${BENCH_TRL:-trl}"

python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "$TORCH"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf '%s\n%s\n' "$TORCH" "$TRANSFORMERS" > "$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" -e . "$TRL" psutil
"$VENV/bin/python" - <<'PY'
import torch, transformers, trl
print(f"bench venv ready: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
PY
