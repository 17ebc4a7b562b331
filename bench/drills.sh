#!/usr/bin/env bash
# Issue 37 drill 1, kill and rerun at scale: 8 ranks (oversubscribed) on the demo's tiny LLaMA with every stage
# on (layer gates, calibration, heal). For each stage, a fresh run is started and one rank, picked at random, is
# sent SIGKILL at a random moment after that stage has begun (its first log line); the job must end non-zero, the
# plain rerun must finish, and its plan (plan.json's XXH64), healed weights and export shards must equal an
# uninterrupted run's bit for bit (every stage is deterministic on CPU at a fixed rank count). Slurm's requeue of
# a preempted job is tests/e2e/test_slurm.py's (SIGTERM, exit 75, sbatch --requeue).
#
#   bash bench/drills.sh [OUT_DIR]            (default bench-data/drills; about 25 minutes on 2 cores)
#   DRILL_RANKS=8 DRILL_SEED=1 DRILL_STAGES="train_gates heal" bash bench/drills.sh
# Prints one verdict line per stage and ends non-zero when any verdict is FAIL.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/bench-data/drills}
mkdir -p "$out"; out=$(cd "$out" && pwd)
cli=${HAWADA_CLI:-$repo/build/pipeline/hawada-pipeline}
ranks=${DRILL_RANKS:-8}
stages=${DRILL_STAGES:-"teacher_cache train_gates reduce_gates rounding_search calibrate heal export"}
RANDOM=${DRILL_SEED:-1}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
[ -x "$cli" ] || { echo "drills.sh: $cli missing: run launch/setup.sh" >&2; exit 1; }

model=$out/tiny-llama data=$out/tokens.h5
[ -f "$model/config.json" ] || "$cli" make-model --arch llama --preset tiny --seed 0 "$model" >/dev/null
[ -f "$data" ] || "$cli" make-data "$model" --samples 512 --seq-len 64 --seed 0 "$data" >/dev/null

config() {  # config NAME: a run of its own, with its own teacher cache (a kill in teacher_cache must recompute)
  cat > "$out/$1.toml" <<TOML
[run]
dir = "$out/runs/$1"
seed = 0
threads_per_rank = 1
[model]
path = "$model"
dtype = "fp32"
[data]
format = "tokens_h5"
path = "$data"
seq_len = 64
[teacher]
cache_root = "$out/runs/$1-cache"
top_k = 32
[gates]
heads = true
ffn = true
hidden = true
layers = true
[train]
steps = 120
warmup = 40
micro_batch = 1
lr = 0.05
holdout = 32
checkpoint_every = 20
[budget]
target = 0.6
[search]
ffn_multiple = 32
hidden_multiple = 16
[calibrate]
steps = 40
micro_batch = 1
checkpoint_every = 4
[heal]
steps = 120
micro_batch = 1
lr = 0.001
checkpoint_every = 10
[export]
name = "slim"
TOML
}

# What must be equal: the plan's checksum, the healed weights and the export's shards.
digest() {
  local run=$out/runs/$1
  python3 -c "import json,sys; print('plan', json.load(open(sys.argv[1]))['xxh64'])" "$run/plan/plan.json"
  (cd "$run" && sha256sum heal/weights.safetensors export/slim/*.safetensors)
}

rm -rf "$out/runs"
config reference
t0=$(date +%s)
mpirun -np "$ranks" --oversubscribe "$cli" "$out/reference.toml" > "$out/reference.log" 2>&1 ||
  { echo "drills.sh: the uninterrupted run failed: $out/reference.log" >&2; exit 1; }
echo "uninterrupted run: $ranks ranks, $(( $(date +%s) - t0 )) s"
digest reference > "$out/reference.digest"

failed=0
for stage in $stages; do
  name=kill-$stage
  config "$name"
  log=$out/$name.log
  mpirun -np "$ranks" --oversubscribe "$cli" "$out/$name.toml" > "$log" 2>&1 &
  job=$!
  # Wait for the stage's first log line, then a random 0-1.5 s, then SIGKILL one rank.
  until grep -q "] $stage: " "$log" 2>/dev/null || ! kill -0 "$job" 2>/dev/null; do sleep 0.05; done
  d=$(( RANDOM % 16 )); sleep "$(( d / 10 )).$(( d % 10 ))"
  mapfile -t pids < <(pgrep -f "^$cli $out/$name.toml" | sort -n)  # the ranks, not mpirun
  verdict=PASS why=""
  if [ "${#pids[@]}" -eq 0 ]; then
    wait "$job"; rc=$?; verdict=FAIL why="the job ended before the kill (rc $rc)"
  else
    victim=${pids[$(( RANDOM % ${#pids[@]} ))]}
    at=$(grep -o '\] [a-z_]*: ' "$log" | grep -v -e warning -e error | tail -1 | tr -d '] :')
    kill -KILL "$victim" 2>/dev/null
    wait "$job"; rc=$?
    [ "$rc" -ne 0 ] || { verdict=FAIL why="the killed job exited 0"; }
    if [ "$verdict" = PASS ]; then
      t0=$(date +%s)
      if ! mpirun -np "$ranks" --oversubscribe "$cli" "$out/$name.toml" > "$out/$name-rerun.log" 2>&1; then
        verdict=FAIL why="the rerun failed: $out/$name-rerun.log"
      elif ! diff <(digest "$name") "$out/reference.digest" > "$out/$name.diff"; then
        verdict=FAIL why="the rerun's outputs differ from the uninterrupted run's: $out/$name.diff"
      else
        resumed=$(grep -o '[a-z_]*: resumed from [a-z ]*[0-9]*' "$out/$name-rerun.log" | head -3 | paste -sd ';' -)
        skipped=$(grep -c 'skipped, its marker matches' "$out/$name-rerun.log")
        why="killed pid $victim during $at (job rc $rc); rerun $(( $(date +%s) - t0 )) s, $skipped stages skipped${resumed:+, $resumed}; plan, healed weights and export equal"
      fi
    fi
  fi
  [ "$verdict" = PASS ] || failed=1
  echo "$stage: $verdict: $why"
done
exit "$failed"
