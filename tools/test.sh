#!/usr/bin/env bash
# Lint, type-check, check the import layers and run the whole test suite (after setup.sh
# and setup-tests.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenBLAS, with the GEMM-to-GEMV shim in front (conva_mlx/models/blas.py builds it once).
PRELOAD=$(.venv/bin/python -m conva_mlx.models.blas)
if [[ -n "$PRELOAD" ]]; then export LD_PRELOAD="$PRELOAD${LD_PRELOAD:+:$LD_PRELOAD}"; fi
export HF_HUB_OFFLINE=1
.venv/bin/ruff check conva_mlx tui tools tests
.venv/bin/mypy
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache  # layer contracts
.venv/bin/python -m pytest -q "$@"
