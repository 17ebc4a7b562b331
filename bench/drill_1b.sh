#!/usr/bin/env bash
# Issue 37 drill 6, the seed's model at its real shape: LLaMA-3.2-1B's config (1.24 B params, 16 layers, 32 heads /
# 8 kv heads, FFN 8192, 128,256-token vocabulary, tied embeddings) with random weights (make-model), every stage
# (teacher_cache, train_gates with layer gates, reduce_gates, rounding_search, calibrate with the span refit, heal,
# export, evaluate) on 2 CPU ranks at a short sequence length and a few steps each. Prints each stage's time and
# peak host RSS (the largest rank's and all ranks', from <run>/memory.json: VmHWM reset at each stage's start) and a
# verdict: PASS when every stage finished or refused before it began with a ConfigError naming what it would need
# (exit 2); FAIL on anything else (an OOM kill is exit 137).
#
#   bash bench/drill_1b.sh [OUT_DIR]     (default bench-data/drill-1b; about 15 minutes on 2 cores with AMX)
#   Knobs: D1B_RANKS (2), D1B_SEQ (64), D1B_DTYPE (model.dtype: bf16 where the CPU has AMX or AVX512-BF16, else
#   fp32), D1B_HEAL_TRAIN (heal.train, "all"), D1B_TARGET (budget.target on the params, 0.5)
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/bench-data/drill-1b}
mkdir -p "$out"; out=$(cd "$out" && pwd)
cli=${HAWADA_CLI:-$repo/build/pipeline/hawada-pipeline}
ranks=${D1B_RANKS:-2} seq=${D1B_SEQ:-64}
dtype=${D1B_DTYPE:-$(grep -qE 'amx_bf16|avx512_bf16' /proc/cpuinfo && echo bf16 || echo fp32)}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
[ -x "$cli" ] || { echo "drill_1b.sh: $cli missing: run launch/setup.sh" >&2; exit 1; }

model=$out/llama-3.2-1b data=$out/tokens.h5
[ -f "$model/config.json" ] || "$cli" make-model --arch llama --preset llama-3.2-1b --seed 0 "$model" >/dev/null
[ -f "$data" ] || "$cli" make-data "$model" --samples 48 --seq-len "$seq" --seed 0 "$data" >/dev/null
cat > "$out/run.toml" <<TOML
[run]
dir = "$out/run"
threads_per_rank = 1
[model]
path = "$model"
dtype = "$dtype"
[data]
format = "tokens_h5"
path = "$data"
seq_len = $seq
[teacher]
cache_root = "$out/cache"
[gates]
heads = true
ffn = true
hidden = true
layers = true
[train]
steps = 4
warmup = 1
micro_batch = 1
holdout = 8
importance_batches = 2
checkpoint_every = 2
[budget]
target = ${D1B_TARGET:-0.5}
[search]
probe_shapes = 2
probe_steps = 2
[calibrate]
steps = 4
micro_batch = 1
reconstruct_samples = 8
[heal]
steps = 4
micro_batch = 1
train = "${D1B_HEAL_TRAIN:-all}"
[evaluate]
data = "$data"
samples = 8
[export]
name = "slim"
TOML

t0=$(date +%s)
/usr/bin/time -v mpirun -np "$ranks" --oversubscribe "$cli" "$out/run.toml" > "$out/run.log" 2>&1
rc=$?
echo "1B drill: $ranks ranks, model.dtype $dtype, seq_len $seq, heal.train ${D1B_HEAL_TRAIN:-all}: exit $rc after $(( $(date +%s) - t0 )) s"
python3 - "$out/run/memory.json" <<'PY'
import json, os, sys
if not os.path.exists(sys.argv[1]):
    sys.exit(0)
m = json.load(open(sys.argv[1]))
print(f"{'stage':16} {'seconds':>8} {'peak RSS, largest rank':>24} {'all ranks':>10}")
order = ["teacher_cache", "train_gates", "reduce_gates", "rounding_search", "calibrate", "heal", "export", "evaluate",
         "report"]
for stage, v in sorted(m.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
    print(f"{stage:16} {v['seconds']:8.1f} {v['peak_host_rss_bytes_max_rank'] / 2**30:20.2f} GiB "
          f"{v['peak_host_rss_bytes_all_ranks'] / 2**30:6.2f} GiB")
PY
grep -h "ConfigError\|would need\|Killed\|signal" "$out/run.log" | head -5
if [ "$rc" = 0 ] || { [ "$rc" = 2 ] && grep -q "would need" "$out/run.log"; }; then
  echo "verdict: PASS"
else
  echo "verdict: FAIL (exit $rc; $out/run.log)"; exit 1
fi
