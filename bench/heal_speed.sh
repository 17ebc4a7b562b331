#!/usr/bin/env bash
# Our heal step against the Python reference of the same heal (bench/heal_reference.py: a transformers
# model of the pruned shape, fp32 parameters, bf16 autocast, the same top-k + tail KL from the same
# teacher cache, torch AdamW, clipping), 1 rank, 1 thread each, the same micro-batch, measured in the
# same run. Prints the ratios the heal issue asks for: ours / reference steps per second (>= 1.0 is
# as fast or faster) and ours / reference peak resident memory.
#
#   bash bench/heal_speed.sh RUN_CONFIG.toml [STEPS] [OUT_DIR]
#
# RUN_CONFIG is a finished run's config (its run.dir holds the plan and calibrated scales, its
# teacher cache is complete, its export/slim has the pruned shape): e.g. a bench/quality.sh run.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src_cfg=$(realpath "$1")
steps=${2:-12}
out=${3:-$repo/bench-data/heal-speed}
py=$repo/.venv/bin/python
cli=${HAWADA_CLI:-$repo/build/pipeline/hawada-pipeline}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mkdir -p "$out"; out=$(cd "$out" && pwd)

field() { "$py" -c "import tomllib,sys; c=tomllib.load(open('$src_cfg','rb')); print(c$1)"; }
run_dir=$(field "['run']['dir']")
data=$(field "['data']['path']")
holdout=$(field "['train'].get('holdout', 0)")
[ -f "$run_dir/plan/plan.json" ] && [ -d "$run_dir/export/slim" ] || {
  echo "heal_speed.sh: $run_dir has no plan or export: run the pipeline on $src_cfg first" >&2; exit 1; }

# A copy of the run up to calibrate; heal for STEPS steps on the run's own data, one micro-batch of 8.
rm -rf "$out/run"; mkdir -p "$out/run"
for d in "$run_dir"/*; do
  case $(basename "$d") in heal|export|evaluate|report) ;; *) cp -r "$d" "$out/run/" ;; esac
done
"$py" - "$src_cfg" "$out/speed.toml" "$out/run" "$steps" <<'PY'
import sys, tomllib
src, dst, run, steps = sys.argv[1:]
c = tomllib.load(open(src, "rb"))
c["run"]["dir"] = run
c["run"]["threads_per_rank"] = 1
c["heal"] = {"steps": int(steps), "micro_batch": 8, "grad_accum": 1, "warmup": 2, "eval_every": 0,
             "checkpoint_every": 100000, "train": "all"}  # the reference trains every weight
def val(v):
    return ("true" if v else "false") if isinstance(v, bool) else repr(v).replace("'", '"')
with open(dst, "w") as f:
    for sec, kv in c.items():
        f.write(f"[{sec}]\n" + "".join(f"{k} = {val(v)}\n" for k, v in kv.items()))
PY
/usr/bin/time -v -o "$out/ours.time" mpirun -np 1 "$cli" "$out/speed.toml" --stages heal > "$out/ours.log" 2>&1
ours_step=$("$py" -c "import json,statistics; r=[json.loads(l) for l in open('$out/run/heal/metrics.jsonl') if '\"step_s\"' in l][2:]; print(statistics.median(x['step_s'] for x in r))")
ours_rss=$(awk '/Maximum resident/ {print $NF * 1024}' "$out/ours.time")

# The run data's teacher cache: the complete one whose sample count is the data file's.
cache=$("$py" - "$(field "['teacher']['cache_root']")" "$data" <<'PY'
import glob, json, os, sys, h5py
n = h5py.File(sys.argv[2], "r")["input_ids"].shape[0]
for d in sorted(glob.glob(os.path.join(sys.argv[1], "*", "index.json"))):
    if json.load(open(d))["samples"] == n:
        print(os.path.dirname(d)); break
PY
)
ref=$("$py" "$repo/bench/heal_reference.py" "$run_dir/export/slim" "$cache" "$data" --steps "$steps" \
      --micro-batch 8 --grad-accum 1 --threads 1 --holdout "$holdout" | tail -1)
"$py" - "$ours_step" "$ours_rss" "$ref" <<'PY' | tee "$out/heal_speed.json"
import json, sys
ours_s, ours_rss, ref = float(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
print(json.dumps({"ours_step_s": ours_s, "ours_peak_rss_bytes": ours_rss, "reference": ref,
                  "steps_per_s_ratio_ours_over_reference": ref["median_step_s"] / ours_s,
                  "peak_memory_ratio_ours_over_reference": ours_rss / ref["peak_rss_bytes"]}))
PY
