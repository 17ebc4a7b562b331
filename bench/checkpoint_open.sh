#!/usr/bin/env bash
# Benchmark: open a LLaMA-3.2-1B-sized checkpoint (2.47 GB bf16) and make a tensor of every weight.
# Ours (mmap, zero-copy) against Python safetensors on the same file, warm page cache, one thread.
# Prints both JSON lines and the ratio reference_time / our_time (higher is better for us).
#   bench/checkpoint_open.sh [MODEL_DIR]   (default: bench-data/llama-1b-shaped, made on first use)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HAWADA_BUILD_DIR:-$repo/build}
py=$repo/.venv/bin/python
model=${1:-$repo/bench-data/llama-1b-shaped}
[ -f "$model/model.safetensors" ] || [ -f "$model/model.safetensors.index.json" ] || "$py" "$repo/bench/make_llama_1b_shaped.py" "$model"
export OMP_NUM_THREADS=1
cat "$model"/*.safetensors > /dev/null   # warm the page cache for both
ours=$("$build/bench/bench_checkpoint_open" "$model")
ref=$("$py" "$repo/bench/checkpoint_open_reference.py" "$model")
echo "$ours"
echo "$ref"
"$py" - "$ours" "$ref" <<'PY'
import json, sys
o, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio (reference seconds / ours): {r['seconds'] / o['seconds']:.1f}x; "
      f"resident memory growth: ours {o['rss_growth_mib']} MiB, reference {r['rss_growth_mib']} MiB; "
      f"ours copied {o['copied_bytes']} of {o['bytes']} bytes")
PY
