#!/usr/bin/env bash
# The teacher cache's forms against each other (issue 22) on the real SmolLM2-135M-Instruct: one pruned
# student (short gate stages on the heal windows: depth + width at bench/depth.sh's decode budget,
# unhealed), then healed from that same state on the same CACHE_HEAL_TOKENS tokens (the first windows of
# the heal file, one pass; the gate stages saw the same windows) with
# the teacher cached as each of CACHE_MODES (top-64, top-16, sampled 12, sampled 24 by default). For each:
# held-out perplexity and full-vocabulary KL(teacher || student) on 64 windows of the GNU Coding Standards
# (bench/quality_reference.py kl, transformers, fp32), the cache's bytes per token and the teacher_cache
# stage's tokens/s, one JSON line each in OUT_DIR/cache_modes.jsonl.
#
# fp32 compute (CACHE_DTYPE): on a CPU without bf16 arithmetic (AVX2 only) bf16 runs ~5x slower.
#
#   bash bench/cache_modes.sh [OUT_DIR]     (default bench-data/cache-modes; ~10 min per form at 80 K tokens)
#   CACHE_HEAL_TOKENS=500000 CACHE_MODES="top_k:64 sampled:12" CACHE_GATE_STEPS=60 bash bench/cache_modes.sh
#   CACHE_HEAL_STEPS=20: heal fewer steps than one pass over the windows (the caches still hold them all)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/bench-data/cache-modes}
mkdir -p "$out"; out=$(cd "$out" && pwd)
py=$repo/.venv/bin/python
cli=${HAWADA_CLI:-$repo/build/pipeline/hawada-pipeline}
models=${HAWADA_MODELS_DIR:-$repo/models}
model=$models/smollm2-135m evalf=$models/data/smollm2-eval-256.h5
for f in "$model/model.safetensors" "$evalf" "$models/data/smollm2-heal-256.h5" "$cli"; do
  [ -e "$f" ] || { echo "cache_modes.sh: $f missing: run launch/setup.sh" >&2; exit 1; }
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
heal_tokens=${CACHE_HEAL_TOKENS:-80000}
gate_steps=${CACHE_GATE_STEPS:-20}
modes=${CACHE_MODES:-"top_k:64 sampled:12 top_k:16"}
tokens_per_step=$((8 * 256))
windows_steps=$(( (heal_tokens + tokens_per_step - 1) / tokens_per_step ))
steps=${CACHE_HEAL_STEPS:-$windows_steps}  # heal steps (default: one pass over the windows)
healf=$out/heal-$heal_tokens.h5
[ -f "$healf" ] || "$py" - "$models/data/smollm2-heal-256.h5" "$healf" $((windows_steps * 8)) <<'PY'
import sys, h5py
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
    g["input_ids"] = f["input_ids"][:n]
PY

config() {  # config NAME LOGITS N HEAL_STEPS
  local teacher="top_k = $3" data=$healf
  [ "$2" = sampled ] && teacher="logits = \"sampled\"
samples = $3"
  cat > "$out/$1.toml" <<TOML
[run]
dir = "$out/runs/$1"
threads_per_rank = 1
[model]
path = "$model"
dtype = "${CACHE_DTYPE:-fp32}"
[data]
format = "tokens_h5"
path = "$data"
seq_len = 256
[teacher]
cache_root = "$out/teacher-cache"
$teacher
[gates]
heads = true
ffn = true
hidden = true
layers = true
[train]
steps = $gate_steps
warmup = $((gate_steps / 2))
micro_batch = 4
holdout = 16
importance_batches = 8
lr = 0.1
[budget]
metric = "latency"
latency_mode = "decode"
decode_context = 256
target = ${CACHE_TARGET:-0.42}
device_flops = 2e11
device_bandwidth = 9.35e9
layer_overhead_s = 3.56e-4
[search]
ffn_multiple = 128
probe_shapes = 2
probe_steps = 4
[calibrate]
steps = 30
lr = 0.03
[heal]
steps = $4
lr = 0.0003
warmup = 10
eval_every = 1000
checkpoint_every = 1000
data = "$healf"
[evaluate]
data = "$evalf"
TOML
}

results=$out/cache_modes.jsonl
if [ ! -d "$out/runs/base/export/slim" ]; then
  config base top_k 64 0
  mpirun -np 2 --oversubscribe "$cli" "$out/base.toml" > "$out/base.log" 2>&1
fi
unhealed=$("$py" "$repo/bench/quality_reference.py" kl "$model" "$out/runs/base/export/slim" "$evalf" 2>/dev/null | tail -1)
echo "unhealed: $unhealed"
echo "{\"form\": \"unhealed\", \"reference\": $unhealed}" >> "$results"
for m in $modes; do
  kind=${m%%:*} n=${m##*:} name=${m/:/-}
  rm -rf "$out/runs/$name"; cp -r "$out/runs/base" "$out/runs/$name"
  # data.path and heal.data both name the heal windows: the teacher cache holds only those for each form.
  config "$name" "$kind" "$n" "$steps"
  t0=$(date +%s)
  mpirun -np 2 --oversubscribe "$cli" "$out/$name.toml" --stages teacher_cache,heal,export > "$out/$name.log" 2>&1
  wall=$(( $(date +%s) - t0 ))
  ref=$("$py" "$repo/bench/quality_reference.py" kl "$model" "$out/runs/$name/export/slim" "$evalf" 2>/dev/null | tail -1)
  bytes=$(grep -o '[0-9.]* bytes per token on disk' "$out/$name.log" | tail -1 | cut -d' ' -f1 || true)
  speed=$(grep -o 'computed .* tokens/s' "$out/$name.log" | tail -1 | grep -o '[0-9.]* tokens/s' | cut -d' ' -f1 || true)  # none when the cache was reused
  [ -d "$out/runs/$name/export/slim" ] && grep -q "heal: done" "$out/$name.log" || { echo "cache_modes.sh: $name failed (see $out/$name.log)" >&2; exit 1; }
  echo "$name healed on $((steps * tokens_per_step)) tokens: $ref; ${bytes} B/token; teacher ${speed} tokens/s (rank 0); wall ${wall}s"
  echo "{\"form\": \"$name\", \"heal_tokens\": $((steps * tokens_per_step)), \"reference\": $ref, \"bytes_per_token\": ${bytes:-null}, \"teacher_tokens_per_s_rank0\": ${speed:-null}, \"wall_s\": $wall}" >> "$results"
done
