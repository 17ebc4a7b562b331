#!/usr/bin/env bash
# Benchmark: stage teacher_cache. tokens/s of ours (1 rank x 1 thread, then 2 ranks x 1 thread) against a
# Python reference doing the same work (bench/teacher_cache_reference.py, 1 thread) on the same ~100M
# LLaMA-style model and 128 x 128 tokens (two cache chunks), k = 64, bf16 values, fp32 compute; bytes per token on disk.
# Prints the ratio ours/reference and the 2-rank scaling; then the sampled cache (teacher.logits = sampled,
# 12 draws): its speed and bytes per token; then ours with the head in fp32 (model.head_matmul = "fp32"; the
# default "auto" runs it as bf16 products with fp32 accumulation on a CPU with AMX or AVX512-BF16). Only the
# teacher_cache stage runs (--stages).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HAWADA_BUILD_DIR:-$repo/build}
py=$repo/.venv/bin/python
data=$repo/bench-data/llama-100m
[ -f "$data/tokens.h5" ] || "$py" "$repo/bench/make_llama_100m_shaped.py" "$data" 128
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
config() {  # name [extra teacher keys] [extra model keys]
  cat > "$work/$1.toml" <<TOML
[run]
dir = "$work/$1"
threads_per_rank = 1
[model]
path = "$data/model"
dtype = "fp32"
${3:-}
[data]
format = "tokens_h5"
path = "$data/tokens.h5"
seq_len = 128
[teacher]
cache_root = "$work/cache-$1"
top_k = 64
store_dtype = "bf16"
batch_size = 8
${2:-}
TOML
  echo "$work/$1.toml"
}
stage_seconds() { grep -o 'teacher_cache: done in [0-9.]*' "$1" | grep -o '[0-9.]*$'; }
tokens=$((128 * 128))
mpirun -np 1 "$build/pipeline/hawada-pipeline" "$(config one)" --stages teacher_cache 2> "$work/one.log"
mpirun -np 2 "$build/pipeline/hawada-pipeline" "$(config two)" --stages teacher_cache 2> "$work/two.log"
mpirun -np 1 "$build/pipeline/hawada-pipeline" "$(config sampled 'logits = "sampled"')" --stages teacher_cache 2> "$work/sampled.log"
mpirun -np 1 "$build/pipeline/hawada-pipeline" "$(config fp32head '' 'head_matmul = "fp32"')" --stages teacher_cache 2> "$work/fp32head.log"
ref=$("$py" "$repo/bench/teacher_cache_reference.py" "$data/model" "$data/tokens.h5" "$work/ref" 1 2>/dev/null)
refbf=$("$py" "$repo/bench/teacher_cache_reference.py" "$data/model" "$data/tokens.h5" "$work/refbf" 1 bf16 2>/dev/null)
one=$(stage_seconds "$work/one.log"); two=$(stage_seconds "$work/two.log"); sampled=$(stage_seconds "$work/sampled.log")
fp32head=$(stage_seconds "$work/fp32head.log")
head=$(grep -q "LM head: bf16" "$work/one.log" && echo "bf16 products, fp32 accumulation" || echo fp32)
bytes=$(du -cb "$work"/cache-one/*/chunk-*.h5 | tail -1 | cut -f1)
sbytes=$(du -cb "$work"/cache-sampled/*/chunk-*.h5 "$work"/cache-sampled/*/index.json | tail -1 | cut -f1)
"$py" - "$ref" "$one" "$two" "$tokens" "$bytes" "$sampled" "$sbytes" "$fp32head" "$head" "$refbf" <<'PY'
import json, sys
ref, one, two, tokens, nbytes = json.loads(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sampled, sbytes, fp32head, head = float(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8]), sys.argv[9]
refbf = json.loads(sys.argv[10])
print(f"ours 1 rank x 1 thread: {tokens / one:.1f} tokens/s ({one:.2f} s, stage time incl. model load and hashing; "
      f"LM head: {head})")
print(f"ours 2 ranks x 1 thread: {tokens / two:.1f} tokens/s ({two:.2f} s)")
print(f"python reference 1 thread: {ref['tokens_per_s']} tokens/s ({ref['seconds']} s, compute loop only)")
print(f"ratio ours/reference (1 thread): {tokens / one / ref['tokens_per_s']:.2f}; 2-rank scaling: {one / two:.2f}x; "
      f"{nbytes / tokens:.1f} bytes per token on disk")
print(f"sampled cache (12 draws) 1 rank x 1 thread: {tokens / sampled:.1f} tokens/s, {sbytes / tokens:.1f} bytes per token "
      f"on disk (index included)")
print(f"ours with the head in fp32 (model.head_matmul = fp32): {tokens / fp32head:.1f} tokens/s; ratio to the reference "
      f"{tokens / fp32head / ref['tokens_per_s']:.2f}")
print(f"python reference with the head as bf16 products (the same numerics as ours on AMX): {refbf['tokens_per_s']} "
      f"tokens/s; ratio ours/that: {tokens / one / refbf['tokens_per_s']:.2f}")
PY
