#!/usr/bin/env bash
# The whole guppyforge pipeline on a CPU, one step at a time, in ./demo/:
# a new persona -> 60,000 conversations -> a tiny model -> its score -> a few replies.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${DEMO:-demo}
MINUTES=${MINUTES:-4}  # the training budget: the schedule is fitted to it, whatever the CPU
PRECISION=${PRECISION:-auto}  # fp32 shows what a CPU without native bf16 gets
mkdir -p "$DEMO"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
start=$(date +%s)

step "1. a new persona, forked from the built-in cat: $DEMO/cat.yaml"
rm -f "$DEMO/cat.yaml"
# (`guppyforge new-persona NAME` alone writes a neutral starter to fill in yourself.)
guppyforge new-persona cat --from cat --dir "$DEMO"

step "2. validate it and see how many conversations it can make"
guppyforge validate "$DEMO/cat.yaml"

step "3. a peek at what it generates"
guppyforge preview "$DEMO/cat.yaml" -n 3 --seed 1

step "4. generate 60,000 conversations as a Hugging Face dataset"
guppyforge generate "$DEMO/cat.yaml" -n 60000 --seed 42 --out "$DEMO/data" --force

step "5. train the tiny preset on the CPU for $MINUTES minutes"
rm -rf "$DEMO/run"
guppyforge train "$DEMO/data" --out "$DEMO/run" --preset tiny --max-minutes "$MINUTES" --precision "$PRECISION"

step "6. score it: perplexity; own, perturbed, blind and off-topic pass rates; memorisation"
guppyforge eval "$DEMO/run" --samples 3 --json "$DEMO/eval.json"

step "7. talk to it"
for prompt in "hi" "are you hungry" "what is the meaning of life"; do
  printf 'you: %s\ncat: ' "$prompt"
  guppyforge chat "$DEMO/run" --prompt "$prompt" --temperature 0
done

printf '\nDone in %ss. Chat with your cat:  guppyforge chat %s/run\n' "$(( $(date +%s) - start ))" "$DEMO"
printf 'Edit %s/cat.yaml and run this again to change its personality.\n' "$DEMO"
