#!/usr/bin/env bash
# Lint, type-check, check the import layers and run the whole test suite (after setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenBLAS, with the GEMM-to-GEMV shim in front (conva_mlx/models/blas.py builds it once).
PRELOAD=$(.venv/bin/python -m conva_mlx.models.blas)
if [[ -n "$PRELOAD" ]]; then export LD_PRELOAD="$PRELOAD${LD_PRELOAD:+:$LD_PRELOAD}"; fi
export HF_HUB_OFFLINE=1
# Debian's chromium renders the audit page headless in tests/test_audit.py (skipped without).
if [[ "$(uname -s)" == "Linux" ]] && ! command -v chromium >/dev/null 2>&1 \
   && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || echo "warning: could not install chromium; the audit page's browser test will skip"
fi
.venv/bin/ruff check conva_mlx tui tools tests
.venv/bin/mypy
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache  # layer contracts
.venv/bin/python -m pytest -q "$@"
