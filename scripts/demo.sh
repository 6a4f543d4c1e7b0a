#!/usr/bin/env bash
# The whole guppyforge pipeline on a CPU, one step at a time, in ./demo/.
set -euo pipefail
mkdir -p demo
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. a new persona from the starter template"
rm -f demo/cat.yaml
guppyforge new-persona cat --dir demo

step "2. validate it and see its capacity"
guppyforge validate demo/cat.yaml

step "3. preview a few conversations"
guppyforge preview demo/cat.yaml -n 3 --seed 1
