#!/usr/bin/env bash
# Everything the tests need, on a fresh machine, then nothing else: a venv (.venv) with the CPU
# build of torch and the package's test extras, Debian's Chromium for the browser tests, the web
# page's JavaScript, and llama.cpp (prebuilt, from npm) for the GGUF tests. Run it from anywhere;
# then `.venv/bin/python -m pytest`. A piece that cannot be installed here is reported, and the
# tests that need it fail saying what is missing.
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
    note "no chromium: the browser tests will fail (install it: sudo apt-get install chromium)"
  fi
fi

# The web page's JavaScript, as `export --to web` installs it on first use: the browser builds of
# transformers.js and onnxruntime-web (~15 MB) from the npm registry at the versions
# package-lock.json pins, into the user's cache. llama.cpp checks the GGUF export: node-llama-cpp
# and its prebuilt Linux x64 CPU build from npm (--omit=optional: none of its GPU builds;
# --ignore-scripts: nothing downloaded or compiled at install time).
if command -v npm >/dev/null; then
  python -c 'from guppyforge.apps.export.web import find_runtime; find_runtime()'
  npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error --prefix tests/llama_cpp
else
  note "no npm: the web export and llama.cpp tests will fail (install Node.js 20 with npm)"
fi
