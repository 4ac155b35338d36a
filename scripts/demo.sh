#!/usr/bin/env bash
# The main job: set up (unless --no-setup), then run the demo and print where its outputs are.
# Today: the offline steering analysis on the real SmolLM2 weights (projection, the 'up'
# concept, its dictionary and its effect on a prompt), written under artifacts/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--no-setup" ]; then
    PY=python3
else
    scripts/setup.sh
    PY=.venv/bin/python
fi
out=artifacts/demo
mkdir -p "$out"
vla() { "$PY" -m vla_steering.cli "$@"; }
vla project --model smollm2-135m --out "$out/projection"
vla search --projection "$out/projection" --keywords up --top-n 20 --min-score 0.3 \
    --write "$out/up.yaml" --concept up --strength 5 | tee "$out/up_neurons.txt"
vla validate --dictionary "$out/up.yaml" --model smollm2-135m
vla effect --model smollm2-135m --dictionary "$out/up.yaml" --concept up --strength 5 \
    --prompt "The robot arm moves the block" | tee "$out/effect.txt"
echo
echo "outputs:"
echo "  $out/projection/projection.npz, $out/projection/top_tokens.txt  (every neuron's top tokens)"
echo "  $out/up_neurons.txt, $out/up.yaml                                  (the 'up' concept)"
echo "  $out/effect.txt                                                    (its effect on a prompt)"
