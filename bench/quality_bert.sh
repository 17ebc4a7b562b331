#!/usr/bin/env bash
# Quality on a real pretrained sentence encoder (issue 14): all-MiniLM-L6-v2 at `params` 0.7, trained on
# 4,096 sentences of English prose from Debian packages (256 more held out), evaluated on 512 sentences
# of a different document set (GNU Coding Standards). Ours (configs/all-minilm-l6-v2.toml: gates,
# calibration, heal) against the one-shot activation and weight-magnitude baselines at our exported
# shape, all measured by bench/quality_bert_reference.py (transformers) on the same sentences: embedding
# cosine to the teacher's in its coordinates, on the kept channels, and the correlation of pairwise
# sentence similarities.
#
#   bash bench/quality_bert.sh [OUT_DIR]     (default bench-data/quality-bert; about 30 minutes on 2 cores)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/bench-data/quality-bert}
mkdir -p "$out"; out=$(cd "$out" && pwd)
py=$repo/.venv/bin/python
cli=${HAWADA_CLI:-$repo/build/pipeline/hawada-pipeline}
models=${HAWADA_MODELS_DIR:-$repo/models}
model=$models/all-minilm-l6-v2 train=$models/data/minilm-train-64.h5 evalf=$models/data/minilm-eval-64.h5
for f in "$model/model.safetensors" "$train" "$evalf" "$cli"; do
  [ -e "$f" ] || { echo "quality_bert.sh: $f missing: run launch/setup.sh" >&2; exit 1; }
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
# The recipe, with this script's paths.
sed -e "s|^dir = .*|dir = \"$out/run\"|" -e "s|^path = \"../models/all-minilm-l6-v2\"|path = \"$model\"|" \
    -e "s|^path = \"../models/data/minilm-train-64.h5\"|path = \"$train\"|" \
    -e "s|^cache_root = .*|cache_root = \"$out/teacher-cache\"|" -e "s|^data = .*|data = \"$evalf\"|" \
    "$repo/configs/all-minilm-l6-v2.toml" > "$out/run.toml"
start=$(date +%s)
mpirun -np 2 --oversubscribe -x OMP_NUM_THREADS "$cli" "$out/run.toml" > "$out/run.log" 2>&1 ||
  { tail -20 "$out/run.log"; exit 1; }
echo "ours: $(( $(date +%s) - start )) s wall on 2 ranks"
export_dir=$out/run/export/all-minilm-l6-v2-slim plan=$out/run/plan/plan.json
for kind in activation magnitude; do
  rm -rf "$out/$kind"
  "$py" "$repo/bench/quality_bert_reference.py" baseline "$kind" "$model" "$export_dir" "$train" "$out/$kind" > /dev/null 2>&1
done
rm -rf "$out/unhealed"
printf '%-22s %8s %8s %8s %8s\n' model cosine min kept-ch sim-corr
for name in ours activation magnitude; do
  dir=$export_dir; [ "$name" = ours ] || dir=$out/$name
  "$py" "$repo/bench/quality_bert_reference.py" compare "$model" "$dir" "$plan" "$evalf" 2>/dev/null | tail -1 > "$out/$name.json"
  "$py" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%-22s %8.4f %8.4f %8.4f %8.4f" % (sys.argv[2], r["cosine"], r["min_cosine"], r["cosine_kept_channels"], r["similarity_correlation"]))' "$out/$name.json" "$name"
done
"$py" -c 'import json; c=json.load(open("'"$export_dir"'/config.json")); print("shape: hidden %d, heads %d, intermediate %d" % (c["hidden_size"], c["num_attention_heads"], c["intermediate_size"]))'
"$py" -c 'import json; s=json.load(open("'"$out"'/run/export/summary.json")); print("parameters %.4f of dense; our evaluate stage: %s" % (s["parameters"] / s["dense_parameters"], json.dumps(s["evaluate"]["export"])))'
