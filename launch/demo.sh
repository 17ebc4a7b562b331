#!/usr/bin/env bash
# README command 1: set up whatever is missing, make the self-contained demo model and data, and run
# the pipeline on it under `mpirun -np 2`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/launch/setup.sh"
build=${HAWADA_BUILD_DIR:-$repo/build}
cli=$build/pipeline/hawada-pipeline
root_flags=(); [ "$(id -u)" -ne 0 ] || root_flags=(--allow-run-as-root)
if [ "${1:-}" = --vit ]; then
  model=$repo/demo/tiny-vit config=$repo/configs/demo-vit.toml run=$repo/runs/demo-vit export=demo-vit-slim
  auto=AutoModelForImageClassification
  [ -f "$model/config.json" ] || "$cli" make-model --arch vit --preset tiny --seed 0 "$model"
  [ -f "$repo/demo/images.h5" ] || "$cli" make-data "$model" --samples 512 --seed 0 "$repo/demo/images.h5"
else
  model=$repo/demo/tiny-llama config=$repo/configs/demo.toml run=$repo/runs/demo export=demo-slim
  auto=AutoModelForCausalLM
  [ -f "$model/config.json" ] || "$cli" make-model --arch llama --preset tiny --seed 0 "$model"
  [ -f "$repo/demo/tokens.h5" ] || "$cli" make-data "$model" --samples 512 --seq-len 64 --seed 0 "$repo/demo/tokens.h5"
fi
printf '\n== the demo model (random weights, made by hawada-pipeline make-model)\n'
"$cli" inspect "$model"
printf '\n== mpirun -np 2 hawada-pipeline %s\n' "${config#"$repo"/}"
mpirun "${root_flags[@]}" -np 2 "$cli" "$config"
printf '\n== done\n'
printf 'slimmed model: %s  (transformers: %s.from_pretrained(that path))\n' "$run/export/$export" "$auto"
printf 'report:        %s\n' "$run/report/index.html"
printf 'logs, metrics, plan: %s\n' "$run"
