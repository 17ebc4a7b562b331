#!/usr/bin/env bash
# README command 1: set up whatever is missing, make the self-contained demo model and data, and run
# the pipeline on it under `mpirun -np 2`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/launch/setup.sh"
build=${HAWADA_BUILD_DIR:-$repo/build}
cli=$build/pipeline/hawada-pipeline
if [ ! -f "$repo/demo/tiny-llama/config.json" ]; then
  printf '\n== making the demo model and data in demo/ (random weights, deterministic)\n'
  "$cli" make-model --arch llama --preset tiny --seed 0 "$repo/demo/tiny-llama"
fi
[ -f "$repo/demo/tokens.h5" ] || "$cli" make-data "$repo/demo/tiny-llama" --samples 512 --seq-len 64 --seed 0 "$repo/demo/tokens.h5"
printf '\n== the demo model\n'
"$cli" inspect "$repo/demo/tiny-llama"
root_flags=(); [ "$(id -u)" -ne 0 ] || root_flags=(--allow-run-as-root)
printf '\n== mpirun -np 2 hawada-pipeline configs/demo.toml\n'
mpirun "${root_flags[@]}" -np 2 "$cli" "$repo/configs/demo.toml"
printf '\n== done: run directory %s\n' "$repo/runs/demo"
