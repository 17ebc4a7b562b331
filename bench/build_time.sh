#!/usr/bin/env bash
# Benchmark: the cold build. Wall time of a full build (every target CI builds: the pipeline, tests,
# benchmarks, fuzzers) of this checkout's HEAD against a reference commit (default ecde02c, the last
# one before the precompiled LibTorch header and the core/ split), each in a fresh git worktree and
# build directory, ccache off, `cmake --build -j$(nproc)`, in the same run. Prints both times, the
# CPU time of each, and the ratio.
# Usage: bash bench/build_time.sh [REFERENCE_COMMIT]     (about 15 minutes on 2 cores)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ref=${1:-ecde02c}
py=$repo/.venv/bin/python
torch_prefix=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')
work=$(mktemp -d /tmp/hawada-build-time.XXXXXX)
cleanup() {
  for d in "$work"/*/; do git -C "$repo" worktree remove --force "$d" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
export CCACHE_DISABLE=1

build() {  # $1 name, $2 commit: prints "wall_s cpu_s"
  local dir=$work/$1
  git -C "$repo" worktree add -q --detach "$dir" "$2"
  cmake -S "$dir" -B "$dir/b" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DHAWADA_PYTHON="$py" > "$work/$1.configure.log" 2>&1
  /usr/bin/time -f '%e %U %S' -o "$work/$1.time" cmake --build "$dir/b" -j "$(nproc)" > "$work/$1.build.log" 2>&1
  awk '{printf "%.0f %.0f\n", $1, $2 + $3}' "$work/$1.time"
}

echo "cold build, $(nproc) cores, ccache off: reference $ref against HEAD $(git -C "$repo" rev-parse --short HEAD)"
read -r ref_wall ref_cpu < <(build reference "$ref")
echo "reference $ref: ${ref_wall} s wall, ${ref_cpu} s CPU"
read -r head_wall head_cpu < <(build head HEAD)
echo "HEAD: ${head_wall} s wall, ${head_cpu} s CPU"
awk -v a="$head_wall" -v b="$ref_wall" -v c="$head_cpu" -v d="$ref_cpu" \
  'BEGIN { printf "ratio HEAD / reference: %.2f wall, %.2f CPU\n", a / b, c / d }'
