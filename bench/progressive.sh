#!/usr/bin/env bash
# Issue 35's progressive cut, by hand, against the one-shot cut at the same decode budget and the same distinct heal
# tokens: round 1 cuts SmolLM2-135M to PROG_TARGET1 of its decode latency and heals on the first half of the heal
# tokens; round 2 cuts round 1's healed export to PROG_TARGET of the *dense* latency (its own target is
# PROG_TARGET / round 1's modelled cost) while distilling from the dense model (teacher.model), and heals on the second
# half, windows round 1 never read. Each round is a bench/depth.sh run (same protocol, same keys); held-out
# perplexity of both rounds and the speed of the final export against the dense model, in transformers.
#   bash bench/progressive.sh [OUT]     (PROG_TARGET=0.49 PROG_TARGET1=0.72 PROG_HEAL_TOKENS=1000000 PROG_LR=0.001)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/bench-data/progressive}
mkdir -p "$out"; out=$(cd "$out" && pwd)
py=$repo/.venv/bin/python
models=${HAWADA_MODELS_DIR:-$repo/models}
dense=$models/smollm2-135m healf=$models/data/smollm2-heal-4m-256.h5
target=${PROG_TARGET:-0.49} target1=${PROG_TARGET1:-0.72}
half=$(( ${PROG_HEAL_TOKENS:-1000000} / 2 ))
windows=$(( (half + 255) / 256 ))

# The second half of the heal windows, in a file of its own (heal reads the first heal.samples of its file).
[ -e "$out/heal-second-half.h5" ] || "$py" - "$healf" "$out/heal-second-half.h5" "$windows" <<'PY'
import sys, h5py
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(src, "r") as f, h5py.File(dst + ".tmp", "w") as g:
    ids = f["input_ids"][n:2 * n]
    assert len(ids) == n, f"{src} holds {len(f['input_ids'])} windows, fewer than 2 x {n}"
    g["input_ids"] = ids
import os; os.replace(dst + ".tmp", dst)
PY

common=(DEPTH_VARIANTS=depth DEPTH_HEAL_KEEP=best DEPTH_HEAL_LR="${PROG_LR:-0.001}" DEPTH_HEAL_TOKENS="$half"
        DEPTH_BASELINE=0 DEPTH_SPEED=0 DEPTH_TEACHER_CACHE="$out/teacher-cache")
env "${common[@]}" DEPTH_TARGET="$target1" bash "$repo/bench/depth.sh" "$out/round1"
cost1=$("$py" -c "import json; print(json.load(open('$out/round1/runs/depth/plan/plan.json'))['shape']['cost_ratio'])")
target2=$("$py" -c "print(round($target / $cost1, 4))")
echo "round 1: modelled cost $cost1 of the dense decode latency; round 2's own target $target2"
env "${common[@]}" DEPTH_TARGET="$target2" DEPTH_MODEL="$out/round1/depth-healed-$half" DEPTH_TEACHER_MODEL="$dense" \
  DEPTH_HEAL_DATA="$out/heal-second-half.h5" bash "$repo/bench/depth.sh" "$out/round2"
"$py" "$repo/bench/quality_reference.py" speed "$dense" "$out/round1/depth-healed-$half" "$out/round2/depth-healed-$half" \
  --threads 2 | tee "$out/speed.jsonl"
