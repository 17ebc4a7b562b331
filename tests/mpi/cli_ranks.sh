#!/usr/bin/env bash
# `hawada-pipeline run` under mpiexec -n 2.
#   ok     both ranks succeed; rank 0 alone writes the resolved config
#   abort  rank 1 throws while rank 0 waits in a barrier: the job must end non-zero within seconds
#   hang   rank 1 stops (SIGSTOP) after train_gates' step 2: rank 0 must not wait forever; past dist.timeout_s it
#          names the collective and the step, and the whole job is aborted
set -euo pipefail
mode=$1 cli=$2 data=$3 mpiexec=$4
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/run.toml" <<TOML
[run]
dir = "$tmp/run"
threads_per_rank = 1
[model]
path = "$data/tiny-llama"
[data]
path = "$data/tiny-tokens.bin"
format = "tokens_bin"
seq_len = 8
[train]
steps = 40
warmup = 5
[dist]
timeout_s = 5
TOML
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
fail() { echo "FAIL: $*"; echo "--- output"; cat "$tmp/out"; exit 1; }
start=$(date +%s)
set +e
if [ "$mode" = abort ]; then
  HAWADA_FAULT="run.after_model@1" "$mpiexec" -n 2 --oversubscribe -x HAWADA_FAULT "$cli" "$tmp/run.toml" >"$tmp/out" 2>&1
elif [ "$mode" = hang ]; then
  HAWADA_FAULT="train_gates.after_step_2@1:stop" timeout 120 "$mpiexec" -n 2 --oversubscribe -x HAWADA_FAULT "$cli" \
    "$tmp/run.toml" --stages teacher_cache,train_gates >"$tmp/out" 2>&1
else
  "$mpiexec" -n 2 --oversubscribe "$cli" "$tmp/run.toml" --stages teacher_cache >"$tmp/out" 2>&1
fi
rc=$?
set -e
elapsed=$(( $(date +%s) - start ))
cat "$tmp/out"
echo "exit code $rc after ${elapsed}s"
if [ "$mode" = abort ]; then
  [ "$rc" -ne 0 ] || fail "job exited 0 although rank 1 threw"
  [ "$elapsed" -lt 30 ] || fail "job took ${elapsed}s to end: a rank was left hanging"
  grep -q "rank 1/2 on host" "$tmp/out" || fail "the error does not name rank 1 and its host"
  grep -q "fault injected at 'run.after_model'" "$tmp/out" || fail "the error message is missing"
elif [ "$mode" = hang ]; then
  [ "$rc" -ne 0 ] || fail "job exited 0 although rank 1 stopped"
  [ "$rc" -ne 124 ] || fail "job still running after 120 s: rank 0 waited forever for the stopped rank"
  grep -q "fault injected at 'train_gates.after_step_2' (stop)" "$tmp/out" || fail "rank 1 was not stopped"
  grep -Eq "MPI [a-z_]+ (of [0-9]+ bytes )?did not finish within dist.timeout_s = 5 s \(train_gates (after )?step [0-9]+\) on rank 0/2" \
    "$tmp/out" || fail "rank 0 does not name the collective, the step and itself"
  [ "$elapsed" -lt 60 ] || fail "job took ${elapsed}s to end with dist.timeout_s = 5"
else
  [ "$rc" -eq 0 ] || fail "run exited $rc"
  [ -f "$tmp/run/config.resolved.toml" ] || fail "no resolved config"
  n=$(grep -c "resolved config written" "$tmp/out" || true)
  [ "$n" -eq 1 ] || fail "resolved config written $n times, expected once (rank 0)"
fi
echo PASS
