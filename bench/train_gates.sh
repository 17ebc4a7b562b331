#!/usr/bin/env bash
# Benchmark: stage train_gates. Step time, tokens/s and peak RSS of ours (1 rank x 1 thread, run
# without mpirun so /usr/bin/time sees the one process) against a PyTorch reference doing the same
# step (bench/train_gates_reference.py: transformers model, gates by forward pre-hooks, top-k + tail
# KL, budget Lagrangian, Adam; 1 thread), on the same ~100M LLaMA-style model (fp32), 128 x 128
# tokens, teacher cache k = 64 bf16, 12 steps of micro-batch 4; then ours on 2 ranks x 1 thread
# (same per-rank micro-batch, so the global batch doubles). Step time: median step_s after the first
# 2 steps. Prints the ratios ours/reference (steps/s, peak memory) and the 2-rank scaling.
# HAWADA_BENCH_SMALL=1: a tiny random model (2 layers, hidden 64, vocab 512, 64 x 32 tokens) for a
# smoke test in seconds. HAWADA_BENCH_STEPS overrides the step count.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HAWADA_BUILD_DIR:-$repo/build}
bin=$build/pipeline/hawada-pipeline
py=$repo/.venv/bin/python
steps=${HAWADA_BENCH_STEPS:-12} mb=4 accum=1 warmup=4 holdout=16
if [ "${HAWADA_BENCH_SMALL:-0}" = 1 ]; then
  data=$repo/bench-data/llama-small seq=32
  [ -f "$data/tokens.h5" ] || "$py" - "$data" <<'PY'
import os, sys, h5py, numpy as np, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
c = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
LlamaForCausalLM(c).save_pretrained(os.path.join(sys.argv[1], "model"))
with h5py.File(os.path.join(sys.argv[1], "tokens.h5"), "w") as f:
    f["input_ids"] = np.random.default_rng(0).integers(0, 512, size=(64, 32)).astype(np.int32)
PY
else
  data=$repo/bench-data/llama-100m seq=128
  [ -f "$data/tokens.h5" ] || "$py" "$repo/bench/make_llama_100m_shaped.py" "$data" 128
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
config() {  # name -> path of a config with run dir $work/name and the shared cache $work/cache
  cat > "$work/$1.toml" <<TOML
[run]
dir = "$work/$1"
threads_per_rank = 1
seed = 0
[model]
path = "$data/model"
dtype = "fp32"
[data]
format = "tokens_h5"
path = "$data/tokens.h5"
seq_len = $seq
[teacher]
cache_root = "$work/cache"
top_k = 64
store_dtype = "bf16"
batch_size = 8
[train]
steps = $steps
micro_batch = $mb
grad_accum = $accum
warmup = $warmup
holdout = $holdout
checkpoint_every = $steps
[budget]
metric = "params"
target = 0.5
TOML
  echo "$work/$1.toml"
}
rss_mib() { awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2 / 1024}' "$1"; }
mpirun -np 1 "$bin" "$(config one)" --stages teacher_cache 2> "$work/cache.log" || { cat "$work/cache.log"; exit 1; }
/usr/bin/time -v "$bin" "$(config one)" --stages train_gates 2> "$work/one.log" || { cat "$work/one.log"; exit 1; }
mpirun -np 2 --oversubscribe "$bin" "$(config two)" --stages train_gates 2> "$work/two.log" || { cat "$work/two.log"; exit 1; }
cache=$(dirname "$(ls "$work"/cache/*/index.json | head -1)")
ref=$("$py" "$repo/bench/train_gates_reference.py" "$data/model" "$data/tokens.h5" "$cache" \
      "$steps" "$mb" "$accum" 1 "$warmup" "$holdout" 0.5 0 2>/dev/null)
"$py" - "$work/one/train/metrics.jsonl" "$work/two/train/metrics.jsonl" "$(rss_mib "$work/one.log")" "$ref" <<'PY'
import json, statistics, sys
def median(path, key):
    rows = [json.loads(l) for l in open(path)]
    return statistics.median(r[key] for r in (rows[2:] if len(rows) > 2 else rows))
one, two, rss, ref = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
s1, t1, t2 = median(one, "step_s"), median(one, "tokens_per_s"), median(two, "tokens_per_s")
print(f"ours 1 rank x 1 thread: {s1:.3f} s/step, {t1:.1f} tokens/s, peak RSS {rss:.1f} MiB")
print(f"ours 2 ranks x 1 thread: {median(two, 'step_s'):.3f} s/step, {t2:.1f} tokens/s (global batch x2)")
print(f"python reference 1 thread: {ref['step_s']:.3f} s/step, {ref['tokens_per_s']:.1f} tokens/s, "
      f"peak RSS {ref['peak_rss_mib']:.1f} MiB")
print(f"ratio ours/reference (1 thread): steps/s {ref['step_s'] / s1:.2f}, peak memory {rss / ref['peak_rss_mib']:.2f}; "
      f"2-rank scaling: {t2 / t1:.2f}x")
PY
