#!/usr/bin/env bash
# Everything the tests need, on a fresh machine, then nothing else: a venv (.venv) with the CPU
# build of torch and the package's test extras, Debian's Chromium for the browser tests, the web
# page's npm packages, and llama.cpp's Python binding for the GGUF tests. Run it from anywhere;
# then `.venv/bin/python -m pytest`. A piece that cannot be installed here is reported, and the
# tests that need it skip with that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
note() { printf '\033[1mnote:\033[0m %s\n' "$*"; }

python3 -m venv .venv
. .venv/bin/activate
pip install -q torch==2.13.0 # the CPU build first, so nothing pulls a multi-GB CUDA build
pip install -q -e '.[test]'

# Chromium drives the web page and the serve page in tests (playwright uses it; it cannot
# download a browser of its own here). Debian's package, so root installs it.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    note "no chromium: the browser tests will skip (install it: sudo apt-get install chromium)"
  fi
fi

# transformers.js and onnxruntime-web for `export --to web`, from the npm registry at the
# versions package-lock.json pins; never committed. --ignore-scripts: we only copy files.
if command -v npm >/dev/null; then
  npm ci --ignore-scripts --no-audit --no-fund --silent --prefix guppyforge/apps/page
else
  note "no npm: the web export tests will skip (install Node.js 20 with npm)"
fi

# llama.cpp itself checks the GGUF export. PyPI has only its source: the build takes ~15
# minutes on 2 cores, so the wheel is kept in the user's cache for the next run.
LLAMA_VERSION=0.3.36
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/guppyforge/wheels"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  mkdir -p "$WHEELS"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 pip wheel -q --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS" ||
    note "llama-cpp-python did not build: the llama.cpp checks of the GGUF export will skip"
fi
if ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  pip install -q "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
fi
