#!/usr/bin/env bash
# Regenerate config/demo_vla_dictionary.yaml: the demo VLA's concepts, found in SmolLM2-135M's
# upper layers (15-29) by value-vector projection, plus a size-matched random control for 'up'.
set -euo pipefail
cd "$(dirname "$0")/.."
out=config/demo_vla_dictionary.yaml
work=$(mktemp -d)
export PYTHONPATH="$PWD/vla_steering_node${PYTHONPATH:+:$PYTHONPATH}"  # the source tree, not an older install
vla() { .venv/bin/python -m vla_steering.cli "$@"; }
vla project --model smollm2-135m --layers "$(seq -s, 15 29)" --out "$work/projection"
rm -f "$out"
for concept in up down left right; do
    vla search --projection "$work/projection" --keywords "$concept" --top-n 10 --write "$out" --concept "$concept"
done
vla search --projection "$work/projection" --keywords slow slowly careful carefully gently --top-n 10 \
    --write "$out" --concept slow
vla search --projection "$work/projection" --keywords fast quickly quick rapidly --top-n 10 --write "$out" --concept fast
vla control --dictionary "$out" --concept up --name up_random --seed 0
rm -rf "$work"
