#!/usr/bin/env bash
# The teacher cache's forms against each other (issue 22) on the real SmolLM2-135M-Instruct: one pruned
# student (the gate stages of bench/depth.sh: depth + width at a decode budget, unhealed), then healed from
# that same state on the same CACHE_HEAL_TOKENS tokens (the first windows of the heal file, one pass) with
# the teacher cached as each of CACHE_MODES (top-64, top-16, sampled 12, sampled 24 by default). For each:
# held-out perplexity and full-vocabulary KL(teacher || student) on 64 windows of the GNU Coding Standards
# (bench/quality_reference.py kl, transformers, fp32), the cache's bytes per token and the teacher_cache
# stage's tokens/s, one JSON line each in OUT_DIR/cache_modes.jsonl.
#
#   bash bench/cache_modes.sh [OUT_DIR]     (default bench-data/cache-modes; about 15 min per form at 100 K tokens)
#   CACHE_HEAL_TOKENS=500000 CACHE_MODES="top_k:64 sampled:12" bash bench/cache_modes.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/bench-data/cache-modes}
mkdir -p "$out"; out=$(cd "$out" && pwd)
py=$repo/.venv/bin/python
cli=${HAWADA_CLI:-$repo/build/pipeline/hawada-pipeline}
models=${HAWADA_MODELS_DIR:-$repo/models}
model=$models/smollm2-135m train=$models/data/smollm2-train-256.h5 evalf=$models/data/smollm2-eval-256.h5
for f in "$model/model.safetensors" "$train" "$evalf" "$models/data/smollm2-heal-256.h5" "$cli"; do
  [ -e "$f" ] || { echo "cache_modes.sh: $f missing: run launch/setup.sh" >&2; exit 1; }
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
heal_tokens=${CACHE_HEAL_TOKENS:-100000}
modes=${CACHE_MODES:-"top_k:64 sampled:12 top_k:16 sampled:24"}
tokens_per_step=$((8 * 256))
steps=$(( (heal_tokens + tokens_per_step - 1) / tokens_per_step ))
healf=$out/heal-$heal_tokens.h5  # exactly the windows the heal reads, so each form caches only those
"$py" - "$models/data/smollm2-heal-256.h5" "$healf" $((steps * 8)) <<'PY'
import sys, h5py
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
    g["input_ids"] = f["input_ids"][:n]
PY

config() {  # config NAME LOGITS N HEAL_STEPS [DATA]: DATA (default the training file) is what data.path names
  local teacher="top_k = $3" data=${5:-$train}
  [ "$2" = sampled ] && teacher="logits = \"sampled\"
samples = $3"
  cat > "$out/$1.toml" <<TOML
[run]
dir = "$out/runs/$1"
threads_per_rank = 1
[model]
path = "$model"
dtype = "bf16"
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
steps = 60
warmup = 30
micro_batch = 4
holdout = 80
importance_batches = 16
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
probe_shapes = 4
probe_steps = 8
[calibrate]
steps = 100
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
  # data.path = the heal windows too: the heal stage reads heal.data, and the teacher cache then holds
  # only those windows for this form (train_gates, which read the training file, do not run again).
  config "$name" "$kind" "$n" "$steps" "$healf"
  t0=$(date +%s)
  mpirun -np 2 --oversubscribe "$cli" "$out/$name.toml" --stages teacher_cache,heal,export > "$out/$name.log" 2>&1
  wall=$(( $(date +%s) - t0 ))
  ref=$("$py" "$repo/bench/quality_reference.py" kl "$model" "$out/runs/$name/export/slim" "$evalf" 2>/dev/null | tail -1)
  bytes=$(grep -o '[0-9.]* bytes per token on disk' "$out/$name.log" | tail -1 | cut -d' ' -f1)
  speed=$(grep -o 'computed .* tokens/s' "$out/$name.log" | tail -1 | grep -o '[0-9.]* tokens/s' | cut -d' ' -f1)
  [ -d "$out/runs/$name/export/slim" ] && grep -q "heal: done" "$out/$name.log" || { echo "cache_modes.sh: $name failed (see $out/$name.log)" >&2; exit 1; }
  echo "$name healed on $((steps * tokens_per_step)) tokens: $ref; ${bytes} B/token; teacher ${speed} tokens/s (rank 0); wall ${wall}s"
  echo "{\"form\": \"$name\", \"heal_tokens\": $((steps * tokens_per_step)), \"reference\": $ref, \"bytes_per_token\": ${bytes:-null}, \"teacher_tokens_per_s_rank0\": ${speed:-null}, \"wall_s\": $wall}" >> "$results"
done
