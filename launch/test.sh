#!/usr/bin/env bash
# README command 2: set up whatever is missing, build, and run every test (labels unit, mpi, hf,
# e2e, fault; gpu tests report as skipped without a GPU). Extra arguments go to ctest (e.g. -L unit).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/launch/setup.sh"
build=${HAWADA_BUILD_DIR:-$repo/build}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
printf '\n== running the tests\n'
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"
