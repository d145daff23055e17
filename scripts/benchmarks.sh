#!/usr/bin/env bash
# Regenerate the measurements behind BENCHMARKS.md: speed sweeps (asyncvid bench, with the planner's
# prediction beside each measured speedup), the fidelity sweep of the default model (asyncvid eval
# fidelity) and its Pareto plot, and the fidelity of the trained Wan and image-to-video models.
# Run it alone on the machine: any other load skews the timings.
# About 50 minutes on the 2-core development machine.  Usage: scripts/benchmarks.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks}
mkdir -p "$out"
av=.venv/bin/asyncvid
# the default model at the quick-start's settings: 8 frames of 32x32 (8x8 latents), 25 steps, CFG
$av bench --model shapes-t2v --size 32 --steps 25 --sweep --no-memory \
    --json "$out/bench-shapes-t2v.json" --markdown "$out/bench-shapes-t2v.md"
$av eval --fidelity --model shapes-t2v --steps 25 --guidance 5 --prompts 12 --seeds 2 \
    --bench "$out/bench-shapes-t2v.json" --json "$out/fidelity-shapes-t2v.json" \
    --markdown "$out/fidelity-shapes-t2v.md" --plot "$out/pareto-shapes-t2v.png"
# a larger random-weight UNet (34 M parameters), where compute dominates communication
$av bench --model animatediff --preset small --size 32 --steps 12 --sweep \
    --json "$out/bench-small.json" --markdown "$out/bench-small.md"
$av bench --model svd --preset small --size 32 --steps 12 --configs 1x1 1x2 2x1 2x2 \
    --json "$out/bench-svd-small.json" --markdown "$out/bench-svd-small.md"
# the trained video transformer and image-to-video models: fidelity of the same configurations
mkdir -p "$out/wan" "$out/svd"
$av eval fidelity --model shapes-wan --steps 25 --guidance 5 --prompts 12 --seeds 2 \
    --json "$out/wan/fidelity-shapes-wan.json" --markdown "$out/wan/fidelity-shapes-wan.md" \
    --plot "$out/wan/pareto-shapes-wan.png"
$av eval fidelity --model shapes-i2v --steps 25 --guidance 3 --prompts 12 --seeds 2 --configs 2x1w1 2x1w3 2x2w1 2x2w3 \
    --json "$out/svd/fidelity-shapes-i2v.json" --markdown "$out/svd/fidelity-shapes-i2v.md" \
    --plot "$out/svd/pareto-shapes-i2v.png"
echo "done: $out"
