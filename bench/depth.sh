#!/usr/bin/env bash
# Depth + width against width only (issue 21) on the real SmolLM2-135M-Instruct, at the same decode budget:
# the gate stages of bench/quality.sh with budget.metric = latency, latency_mode = decode (batch 1, one
# token against a 256-token KV cache) on rates that describe transformers on this CPU
# (DEPTH_FLOPS, DEPTH_BANDWIDTH, DEPTH_LAYER_OVERHEAD; bench/NOTES.md says how they were fitted), once with
# head, FFN and hidden-channel gates (the strongest width-only) and once with layer gates as well. For each: the held-out perplexity (64 windows of
# the GNU Coding Standards) of the export and of the one-shot baseline at its shape (Minitron's
# activation criterion for widths, ShortGPT's block influence for depth: bench/quality_reference.py
# baseline activation), then the export healed on DEPTH_HEAL_TOKENS tokens of heal.data, and what the
# user feels: transformers' prefill latency and greedy decode speed (batch 1, fp32, KV cache, 64 new
# tokens after a 256-token prompt) of every model against the dense one, measured in one run at the end.
#
#   bash bench/depth.sh [OUT_DIR]     (default bench-data/depth; about 1 hour per heal of 0.5 M tokens)
#   DEPTH_TARGET=0.45 DEPTH_HEAL_TOKENS="500000 2000000" bash bench/depth.sh
#   Other knobs: DEPTH_HEAL_LR (heal.lr), DEPTH_HEAL_KEEP, DEPTH_REFIT_SPANS, DEPTH_HIDDEN_WEIGHT, DEPTH_CACHE, DEPTH_VARIANTS,
#   DEPTH_DTYPE (model.dtype: bf16 where the CPU has AMX or AVX512-BF16, else fp32), DEPTH_HEAD_MATMUL (model.head_matmul),
#   DEPTH_PROBE_STEPS (search.probe_steps), DEPTH_MODEL (model.path: another model than SmolLM2-135M, e.g. an earlier
#   round's export), DEPTH_TEACHER_MODEL (teacher.model), DEPTH_BASELINE=0 / DEPTH_SPEED=0 (skip the one-shot baseline
#   / the speed run: bench/progressive.sh),
#   DEPTH_TEACHER_CACHE (teacher.cache_root, to share one between output directories),
#   DEPTH_RUNTIME=llama.cpp (budget.runtime: the decode budget priced in llama.cpp on this machine, measured by the
#   run itself, instead of the transformers rates; DEPTH_GGUF sets the type timed, q8_0 by default; DEPTH_RATES names a
#   rates file of `hawada-pipeline profile --runtime llama.cpp` measured on a quiet machine instead)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/bench-data/depth}
mkdir -p "$out"; out=$(cd "$out" && pwd)
py=$repo/.venv/bin/python
cli=${HAWADA_CLI:-$repo/build/pipeline/hawada-pipeline}
models=${HAWADA_MODELS_DIR:-$repo/models}
model=${DEPTH_MODEL:-$models/smollm2-135m} train=$models/data/smollm2-train-256.h5 evalf=$models/data/smollm2-eval-256.h5
healf=${DEPTH_HEAL_DATA:-$models/data/smollm2-heal-4m-256.h5}  # 4.2 M distinct tokens: heal.samples caches what a heal reads
for f in "$model/model.safetensors" "$train" "$evalf" "$healf" "$cli"; do
  [ -e "$f" ] || { echo "depth.sh: $f missing: run launch/setup.sh" >&2; exit 1; }
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
ranks=${DEPTH_RANKS:-2}
target=${DEPTH_TARGET:-0.49}
heal_tokens=${DEPTH_HEAL_TOKENS-500000}  # DEPTH_HEAL_TOKENS="" heals nothing
variants=${DEPTH_VARIANTS:-"width depth"}
tokens_per_step=$((8 * 256))
# heal.samples: the heal windows that the longest heal reads once (each is cached, and none is read twice)
max_tokens=0; for n in $heal_tokens; do (( n > max_tokens )) && max_tokens=$n; done
heal_samples=${DEPTH_HEAL_SAMPLES:-$(( (max_tokens + 255) / 256 ))}
cache=${DEPTH_CACHE:-sampled:12}
case $cache in
  top_k:*) teacher_keys="top_k = ${cache#*:}" ;;
  sampled:*) teacher_keys="logits = \"sampled\"
samples = ${cache#*:}" ;;
  *) echo "depth.sh: DEPTH_CACHE must be top_k:N or sampled:N" >&2; exit 2 ;;
esac

# bf16 where the CPU computes it natively (AMX, AVX512-BF16); fp32 elsewhere (AVX2: bf16 matmuls ~8x slower than fp32)
dtype=${DEPTH_DTYPE:-$(grep -qE 'amx_bf16|avx512_bf16' /proc/cpuinfo && echo bf16 || echo fp32)}
budget_runtime="" export_llama_cpp=""
if [ "${DEPTH_RUNTIME:-}" = llama.cpp ]; then
  llama=$(ls -d "$repo"/.llama.cpp/src/*/vendor/llama.cpp 2>/dev/null | head -1)
  [ -n "$llama" ] || { echo "depth.sh: DEPTH_RUNTIME=llama.cpp needs llama.cpp: run launch/setup.sh" >&2; exit 1; }
  budget_runtime="runtime = \"llama.cpp\"
gguf = \"${DEPTH_GGUF:-q8_0}\"${DEPTH_RATES:+
rates = \"$DEPTH_RATES\"}"
  export_llama_cpp="llama_cpp = \"$llama\"
python = \"$py\""
fi

teacher_model_key=${DEPTH_TEACHER_MODEL:+"model = \"$DEPTH_TEACHER_MODEL\""}  # quoted here: a heredoc's ${:+} drops quotes
config() {  # config NAME LAYER_GATES HEAL_STEPS
  cat > "$out/$1.toml" <<TOML
[run]
dir = "$out/runs/$1"
threads_per_rank = 1
[model]
path = "$model"
dtype = "$dtype"
head_matmul = "${DEPTH_HEAD_MATMUL:-auto}"
[data]
format = "tokens_h5"
path = "$train"
seq_len = 256
[teacher]
cache_root = "${DEPTH_TEACHER_CACHE:-$out/teacher-cache}"
$teacher_model_key
$teacher_keys
[gates]
heads = true
ffn = true
hidden = ${DEPTH_HIDDEN:-true}
layers = $2
[train]
steps = 60
warmup = 30
micro_batch = $((8 / ranks))
holdout = 80
importance_batches = $((64 / (8 / ranks)))
lr = 0.1
[budget]
metric = "latency"
latency_mode = "decode"
decode_context = 256
target = $target
device_flops = ${DEPTH_FLOPS:-2e11}
device_bandwidth = ${DEPTH_BANDWIDTH:-9.35e9}
layer_overhead_s = ${DEPTH_LAYER_OVERHEAD:-3.56e-4}
$budget_runtime
[search]
ffn_multiple = 128
probe_shapes = 4
probe_steps = ${DEPTH_PROBE_STEPS:-32}
[calibrate]
steps = 100
lr = 0.03
refit_spans = ${DEPTH_REFIT_SPANS:-true}
[heal]
steps = $3
lr = ${DEPTH_HEAL_LR:-0.0003}
warmup = 30
eval_every = 100
checkpoint_every = 100
data = "$healf"
samples = $heal_samples
hidden_weight = ${DEPTH_HIDDEN_WEIGHT:-0}
keep = "${DEPTH_HEAL_KEEP:-last}"
[evaluate]
data = "$evalf"
[export]
base_model = "HuggingFaceTB/SmolLM2-135M-Instruct"
$export_llama_cpp
TOML
}

ppl() { "$py" "$repo/bench/quality_reference.py" ppl "$1" "$evalf" 2>/dev/null | tail -1 | "$py" -c 'import json,sys; print(json.load(sys.stdin)["ppl"])'; }
shape_of() { "$py" -c "import json; s=json.load(open('$1'))['shape']; print(f\"layers {s['layers']}, heads {s['num_attention_heads']}, ffn {s['intermediate_size']}, {s['cost_ratio']:.3f} of the dense decode latency\")"; }

results="$out/depth.jsonl"
touch "$results"
dense=$(ppl "$model")
echo "dense perplexity on the eval set: $dense"
echo "{\"model\": \"dense\", \"ppl\": $dense}" >> "$results"
speed_models=("$model")

for v in $variants; do
  layers=false; [ "$v" = depth ] && layers=true
  config "$v" "$layers" 0
  t0=$(date +%s)
  mpirun -np "$ranks" --oversubscribe "$cli" "$out/$v.toml" > "$out/$v.log" 2>&1
  wall=$(( $(date +%s) - t0 ))
  export_dir=$out/runs/$v/export/slim
  cp -r "$export_dir" "$out/$v-unhealed"
  ours=$(ppl "$export_dir")
  act=null
  if [ "${DEPTH_BASELINE:-1}" = 1 ]; then
    "$py" "$repo/bench/quality_reference.py" baseline activation "$model" "$export_dir" "$train" "$out/$v-activation" > "$out/$v-activation.json" 2>/dev/null
    act=$(ppl "$out/$v-activation")
  fi
  shape=$(shape_of "$out/runs/$v/plan/plan.json")
  echo "$v: $shape: ours $ours, one-shot activation baseline $act (dense $dense); wall ${wall}s"
  echo "{\"variant\": \"$v\", \"shape\": \"$shape\", \"ours\": $ours, \"activation\": $act, \"dense\": $dense, \"wall_s\": $wall}" >> "$results"
  speed_models+=("$out/$v-unhealed")
  for n in $heal_tokens; do
    steps=$(( n / tokens_per_step ))
    config "$v" "$layers" "$steps"
    t0=$(date +%s)
    mpirun -np "$ranks" --oversubscribe "$cli" "$out/$v.toml" > "$out/$v-heal-$n.log" 2>&1
    wall=$(( $(date +%s) - t0 ))
    healed=$(ppl "$export_dir")
    cp -r "$export_dir" "$out/$v-healed-$n"
    echo "$v healed on $n tokens ($steps steps): perplexity $healed (dense $dense); wall ${wall}s"
    echo "{\"variant\": \"$v\", \"heal_tokens\": $n, \"healed\": $healed, \"dense\": $dense, \"wall_s\": $wall}" >> "$results"
  done
done

# What the user feels, every model in one run on the otherwise quiet machine (2 threads).
if [ "${DEPTH_SPEED:-1}" = 1 ]; then
  "$py" "$repo/bench/quality_reference.py" speed "${speed_models[@]}" --threads 2 | tee -a "$results"
fi
