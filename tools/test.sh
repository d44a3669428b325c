#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (after tools/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BLAS=/usr/lib/$(uname -m)-linux-gnu/openblas-pthread/libblas.so.3
if [[ "$(uname -s)" == "Linux" && -e "$BLAS" ]]; then export LD_PRELOAD="$BLAS${LD_PRELOAD:+:$LD_PRELOAD}"; fi
export HF_HUB_OFFLINE=1
.venv/bin/ruff check conva_mlx tui tools tests
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
