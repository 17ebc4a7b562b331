#!/usr/bin/env bash
# The one command a GPU machine runs (issue 15): everything in one call of at most 8 minutes.
#
#   bash bench/gpu/run.sh OUT_DIR            # on the GPU machine, with the kit (.gpukit) carried along
#   bash bench/gpu/run.sh OUT_DIR --dry-run  # the same steps on the CPU with the tiny model (CI)
#
# Steps: nvidia-smi; the NCCL communicator test at world size 1 and the MPI communicator test on 2
# ranks; make-model (LLaMA-3.2-1B shape, random weights) and make-data; the whole pipeline in bf16 on
# the local GPU (teacher cache over 2048-token samples, 20 training steps, reduce, search, export with
# verify, and every later stage); `profile` (measured block latencies); a transformers forward of the
# same model on the same GPU as the reference of the teacher-forward rate. Then bench/gpu/summarize.py
# prints the numbers (tokens/s, MFU with the FLOPs it counts, step time, export GB/s, peak memory)
# and writes OUT_DIR/summary.json and summary.md. Logs and metrics go to OUT_DIR.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:?usage: bench/gpu/run.sh OUT_DIR [--dry-run]}
dry=0; [ "${2:-}" = --dry-run ] && dry=1
mkdir -p "$out"; out=$(cd "$out" && pwd)
work=${HAWADA_GPU_WORK:-/tmp/hawada-gpu}
rm -rf "$work"; mkdir -p "$work"
t_start=$(date +%s)
: > "$out/steps.txt"
status=0
step() {  # step NAME TIMEOUT_S CMD...: runs, logs to OUT/NAME.log, records the exit code, goes on
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s.%N)
  printf '\n== %s\n' "$name"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  local t1; t1=$(date +%s.%N)
  tail -n 4 "$out/$name.log"
  printf "%s rc=%d %ss\n" "$name" "$rc" "$(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")" | tee -a "$out/steps.txt"
  [ $rc -eq 0 ] || status=1
  return $rc
}

if [ $dry -eq 1 ]; then
  build=${HAWADA_BUILD_DIR:-$repo/build}
  export PATH="$build/pipeline:$build/tests/gpu:$build/tests/mpi:$PATH"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  py=${HAWADA_PYTHON:-$repo/.venv/bin/python}
  preset=tiny samples=160 seq=64 steps=4 batch=2 accum=2 top_k=16 threads=1 ffn_multiple=32 device=cpu
else
  kit=${HAWADA_KIT:-$repo/.gpukit}
  # shellcheck source=/dev/null
  source "$kit/env.sh" || { echo "run.sh: no usable kit at $kit (bash launch/gpu/kit.sh builds it)"; exit 1; }
  py=${HAWADA_TORCH_PYTHON:-python3}
  preset=llama-3.2-1b samples=${HAWADA_GPU_SAMPLES:-512} seq=2048 steps=20 batch=4 accum=2 top_k=64 threads=8 ffn_multiple=256 device=cuda
fi
cli=hawada-pipeline
echo "kind: $([ $dry -eq 1 ] && echo dry-run on the CPU || echo GPU)  preset $preset  samples $samples x $seq  out $out  work $work"

# 1. The machine.
if [ $dry -eq 0 ]; then
  step nvidia-smi 30 nvidia-smi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.csv" 2>&1
  # GPU memory in use, sampled every 200 ms for the whole run (the peak of every process together).
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/gpu-memory.csv" 2>/dev/null &
  smi_pid=$!
fi

# 2. Communicators: NCCL at world size 1 (skipped without a GPU), MPI on 2 ranks.
step test-nccl 120 mpirun -np 1 test_nccl --gtest_brief=1
step test-mpi-2ranks 120 mpirun -np 2 --oversubscribe test_communicator --gtest_brief=1

# 3. Model and data.
step make-model 180 $cli make-model --arch llama --preset $preset --seed 0 "$work/model"
step make-data 60 $cli make-data "$work/model" --samples $samples --seq-len $seq --seed 1 "$work/tokens.h5"

# 4. The whole pipeline in bf16 on the run's device.
cat > "$work/gpu.toml" <<TOML
[run]
dir = "$work/run"
seed = 0
threads_per_rank = $threads
device = "$device"

[model]
path = "$work/model"
dtype = "bf16"

[data]
format = "tokens_h5"
path = "$work/tokens.h5"
seq_len = $seq

[teacher]
cache_root = "$work/cache"
top_k = $top_k
batch_size = 8

[gates]
heads = true
ffn = true

[train]
steps = $steps
warmup = $((steps / 2))
micro_batch = $batch
grad_accum = $accum
holdout = 8
checkpoint_every = 10
importance_batches = 4

[budget]
metric = "params"
target = 0.7

[search]
ffn_multiple = $ffn_multiple

[export]
name = "slim"
max_shard_size = "1GB"
TOML
cp "$work/gpu.toml" "$out/gpu.toml"
step pipeline 420 mpirun -np 1 $cli run "$work/gpu.toml"
cp "$work/run/train/metrics.jsonl" "$out/train-metrics.jsonl" 2>/dev/null
cp "$work/run/export/summary.json" "$out/export-summary.json" 2>/dev/null
cp "$work/run/plan/plan.json" "$out/plan.json" 2>/dev/null

# 5. Measured block latencies of every width the search can pick, at the budget's batch and tokens.
step profile 120 $cli profile "$work/model" --out "$out/latency-table.json" --batch 1 --tokens $seq \
  --ffn-multiple $ffn_multiple --repeats 5

# 6. The reference: transformers' forward of the same checkpoint on the same device and batch.
step hf-forward 150 "$py" "$repo/bench/gpu/hf_forward.py" "$work/model" --batch 8 --seq-len $seq \
  --device $device --out "$out/hf-forward.json"

if [ $dry -eq 0 ]; then kill "$smi_pid" 2>/dev/null; fi
"$py" "$repo/bench/gpu/summarize.py" "$out" --work "$work" --wall $(( $(date +%s) - t_start )) || status=1
exit $status
