#!/usr/bin/env bash
# Benchmark: stage export. Throughput in GB/s of ours (`--force export`: slice the pruned tensors out of
# the dense checkpoint and write the sharded safetensors, fsynced; 1 rank, then 2 ranks writing shards
# in parallel) against `cp` of the same exported safetensors bytes to a new directory on the same disk
# followed by `sync`. Ours: the `(slice + write)` GB/s of the export log line (median of the repeats);
# the stage total (which adds the verification forward on the held-out samples) is printed beside it.
# Also prints the rounding search time and the number of legal shapes from <run.dir>/plan/plan.json.
# Model: the ~100M LLaMA-style model (fp32) of bench/make_llama_100m_shaped.py, budget 0.5 of params
# (hidden-channel gates on: half its parameters are embeddings, so 0.5 is unreachable without them),
# shards of 100 MB; the pipeline runs once in full (1 rank) to produce gates and a plan. The page
# cache is dropped before every timed run where that is allowed (root); the output says whether it was.
# HAWADA_BENCH_SMALL=1: a tiny random model (2 layers, hidden 64) for a smoke test in seconds.
# HAWADA_BENCH_REPEATS: timed runs of each kind (default 3).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HAWADA_BUILD_DIR:-$repo/build}
bin=$build/pipeline/hawada-pipeline
py=$repo/.venv/bin/python
repeats=${HAWADA_BENCH_REPEATS:-3}
if [ "${HAWADA_BENCH_SMALL:-0}" = 1 ]; then
  data=$repo/bench-data/llama-small seq=32 search=$'[search]\nffn_multiple = 8\nhidden_multiple = 8'
  [ -f "$data/tokens.h5" ] || "$py" - "$data" <<'PY'  # the same tiny model as bench/train_gates.sh
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
  data=$repo/bench-data/llama-100m seq=128 search=""
  [ -f "$data/tokens.h5" ] || "$py" "$repo/bench/make_llama_100m_shaped.py" "$data" 128
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
config=$work/export.toml run=$work/run
cat > "$config" <<TOML
[run]
dir = "$run"
threads_per_rank = 1
[model]
path = "$data/model"
dtype = "fp32"
[data]
format = "tokens_h5"
path = "$data/tokens.h5"
seq_len = $seq
[teacher]
cache_root = "$data/cache"
top_k = 64
[gates]
hidden = true
[train]
steps = 2
warmup = 1
micro_batch = 2
holdout = 8
[budget]
target = 0.5
[export]
max_shard_size = "100MB"
$search
TOML
drop_caches() { sync; { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null && echo yes || echo no; }
mpirun -np 1 "$bin" "$config" 2> "$work/full.log" || { cat "$work/full.log"; exit 1; }
export_run() {  # ranks -> "GB/s stage_seconds dropped"
  local log=$work/export-$1.log dropped
  dropped=$(drop_caches)
  mpirun -np "$1" --oversubscribe "$bin" "$config" --force export 2> "$log" || { cat "$log" >&2; exit 1; }
  echo "$(grep -o '[0-9.]* GB/s (slice + write)' "$log" | head -1 | cut -d' ' -f1)" \
       "$(grep -o 'export: done in [0-9.]*' "$log" | grep -o '[0-9.]*$')" "$dropped"
}
cp_run() {  # -> "seconds dropped"
  local dropped t0 t1
  rm -rf "$work/cp"; mkdir "$work/cp"; dropped=$(drop_caches)
  t0=$(date +%s.%N); cp -r "$run"/export/slim/*.safetensors "$work/cp/"; sync; t1=$(date +%s.%N)
  echo "$(awk "BEGIN { print $t1 - $t0 }") $dropped"
}
for _ in $(seq "$repeats"); do export_run 1; done > "$work/one.txt"
for _ in $(seq "$repeats"); do export_run 2; done > "$work/two.txt"
for _ in $(seq "$repeats"); do cp_run; done > "$work/cp.txt"
bytes=$(du -cb "$run"/export/slim/*.safetensors | tail -1 | cut -f1)
grep -h 'export: verify' "$work/export-1.log" | sed 's/^\[[^]]*\] //'
"$py" - "$work" "$bytes" "$run/plan/plan.json" "$run/export/summary.json" <<'PY'
import json, statistics, sys
work, nbytes, plan, summary = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
rows = {k: [l.split() for l in open(f"{work}/{k}.txt")] for k in ("one", "two", "cp")}
dropped = {r[-1] for k in rows for r in rows[k]}
gbps = {k: statistics.median(float(r[0]) for r in rows[k]) for k in ("one", "two")}
stage = {k: statistics.median(float(r[1]) for r in rows[k]) for k in ("one", "two")}
cp_s = statistics.median(float(r[0]) for r in rows["cp"])
gbps["cp"] = nbytes / cp_s / 1e9
print(f"export: {summary['shards']} shard(s), {nbytes / 1e6:.1f} MB of safetensors ({summary['parameters']:.0f} of "
      f"{summary['dense_parameters']:.0f} parameters), median of {len(rows['one'])} runs each; "
      f"page cache dropped before each run: {'yes' if dropped == {'yes'} else 'no'}")
for k, name in (("one", "1 rank "), ("two", "2 ranks")):
    print(f"ours {name}: {gbps[k]:.3f} GB/s slice + write ({summary['bytes'] / gbps[k] / 1e9:.3f} s), "
          f"stage total incl. verification {stage[k]:.3f} s")
print(f"cp + sync:    {gbps['cp']:.3f} GB/s ({cp_s:.3f} s)")
print(f"ratio ours/cp: 1 rank {gbps['one'] / gbps['cp']:.2f}, 2 ranks {gbps['two'] / gbps['cp']:.2f}")
print(f"rounding search: {plan['search_seconds']:.4f} s over {plan['legal_shapes']} legal shapes")
PY
