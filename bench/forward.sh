#!/usr/bin/env bash
# Benchmark: forward throughput, ours against transformers on the same checkpoint, inputs and thread
# count, fp32 and bf16, for a LLaMA-3.2-1B-shaped LM (batch 1 x 128 tokens) and a ViT-Base/16-shaped
# classifier (batch 8). Prints each JSON line and the ratio ours/theirs (higher is better for us).
#   bench/forward.sh [THREADS]   (default: all cores)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HAWADA_BUILD_DIR:-$repo/build}
py=$repo/.venv/bin/python
threads=${1:-$(nproc)}
data=$repo/bench-data
[ -f "$data/llama-1b-shaped/model.safetensors" ] || "$py" "$repo/bench/make_llama_1b_shaped.py" "$data/llama-1b-shaped"
[ -f "$data/vit-base-shaped/model.safetensors" ] || "$py" "$repo/bench/make_vit_base_shaped.py" "$data/vit-base-shaped"
export OMP_NUM_THREADS=$threads
run() {  # model dtype batch seq iters
  local ours theirs
  ours=$("$build/bench/bench_forward" "$data/$1" "$2" "$threads" "$3" "$4" "$5")
  theirs=$("$py" "$repo/bench/forward_reference.py" "$data/$1" "$2" "$threads" "$3" "$4" "$5" 2>/dev/null)
  echo "$1 $2: $ours"
  echo "$1 $2: $theirs"
  "$py" -c 'import json,sys; o,t=json.loads(sys.argv[1]),json.loads(sys.argv[2]); k=[k for k in o if k.endswith("_per_s")][0]; print(f"'"$1 $2"': ratio ours/transformers {o[k]/t[k]:.2f} ({k})")' "$ours" "$theirs"
}
run llama-1b-shaped bf16 1 128 3
run llama-1b-shaped fp32 1 128 2
run vit-base-shaped bf16 8 0 3
run vit-base-shaped fp32 8 0 3
